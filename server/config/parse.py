"""The YAML document of a config file, read into a `GatewayConfig`, one section at a time.

Each reader appends what is wrong to `problems` and carries on, so that a file's problems are reported
together; `unparsed` collects the names of entries that were rejected, so that the cross-field checks
(checks.py) do not repeat their problems.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from server.config.clients import env_digest, hex_digest, parse_client_defaults, parse_clients
from server.config.models import parse_model
from server.config.readers import as_list, mapping, number, numbers, range_of, unknown_keys, worker_count
from server.config.schema import (
    OFFLINE_KINDS,
    PROVIDER_KINDS,
    TRANSPORTS,
    ApiKey,
    AuthConfig,
    ClientToken,
    GatewayConfig,
    InteractiveConfig,
    KeepaliveConfig,
    LimitsConfig,
    MetricsConfig,
    ProviderConfig,
    ProviderKind,
    TLSConfig,
    TransportName,
    is_provider_kind,
)
from server.errors import register_secret
from server.resilience.breaker import BreakerPolicy
from server.resilience.retry import RetryPolicy
from server.routing.catalog import PROVIDER_PRESETS, ModelConfig, ProviderPreset

__all__ = ["parse"]

# Sections of numbers (and booleans) that map one to one onto a frozen dataclass of the config.
_SECTIONS = ("retry", "circuit_breaker", "limits", "keepalive")
_Section = TypeVar("_Section", RetryPolicy, BreakerPolicy, LimitsConfig, KeepaliveConfig)
_TOP_LEVEL_KEYS = frozenset(
    {
        *("listen", "tls", "auth", "providers", "models", "aliases"),
        *("grace_period_s", "max_request_bytes", "log_level", "log", "interactive", "metrics", "workers"),
        *("clients", "client_defaults"),
        *_SECTIONS,
    }
)
_PROVIDER_NUMBERS = (
    *("connect_timeout_s", "read_timeout_s", "max_connections"),
    *("max_concurrent_streams", "first_token_timeout_s", "stream_idle_timeout_s"),
    *("max_response_bytes", "read_buffer_bytes"),
)
_PROVIDER_KEYS = {
    *("name", "kind", "base_url", "api_key_env", "api_key_file", "signing_secret_env", "transport"),
    *_PROVIDER_NUMBERS,
}


def parse(raw: Any, base_dir: Path, env: Mapping[str, str], problems: list[str], unparsed: set[str]) -> GatewayConfig:
    """The config of a YAML document; relative TLS paths are read from `base_dir`, keys and tokens from `env`."""
    top = mapping(raw, "config", problems)
    unknown_keys(top, set(_TOP_LEVEL_KEYS), "", problems)
    config = GatewayConfig()
    if "listen" in top:
        config = replace(config, listen=str(top["listen"]))
    if top.get("tls") is not None:
        config = replace(config, tls=_parse_tls(top["tls"], base_dir, problems))
    if top.get("auth") is not None:
        config = replace(config, auth=_parse_auth(top["auth"], env, problems))
    if top.get("clients") is not None:
        config = replace(config, clients=parse_clients(top["clients"], env, problems))
    if top.get("client_defaults") is not None:
        config = replace(config, client_defaults=parse_client_defaults(top["client_defaults"], problems))
    providers = _parse_providers(top.get("providers", []), env, problems, unparsed, base_dir)
    kinds = {provider.name: provider.kind for provider in providers}
    config = replace(
        config, providers=providers, models=_parse_models(top.get("models", []), problems, unparsed, kinds)
    )
    if top.get("aliases") is not None:
        aliases = mapping(top["aliases"], "aliases", problems)
        config = replace(config, aliases=tuple((str(k), str(v)) for k, v in aliases.items()))
    config = replace(config, **numbers(top, ("grace_period_s",), "", config, problems, minimum=0))
    config = replace(config, **numbers(top, ("max_request_bytes",), "", config, problems, minimum=1))
    if "log_level" in top:
        config = replace(config, log_level=str(top["log_level"]).upper())
    if top.get("log") is not None:
        config = _parse_log(top["log"], config, "log_level" in top, problems)
    if "workers" in top and (workers := worker_count(top["workers"], "workers", problems)) is not None:
        config = replace(config, workers=workers)
    return _parse_sections(top, config, problems)


def _parse_log(raw: Any, config: GatewayConfig, has_log_level: bool, problems: list[str]) -> GatewayConfig:
    """`log: {level, format}`; `level` is the older top-level `log_level`, and only one may be given."""
    entry = mapping(raw, "log", problems)
    unknown_keys(entry, {"level", "format"}, "log.", problems)
    if "level" in entry:
        if has_log_level:
            problems.append("log.level: give either log.level or the top-level log_level, not both")
        config = replace(config, log_level=str(entry["level"]).upper())
    if "format" in entry:
        config = replace(config, log_format=str(entry["format"]).lower())
    return config


def _parse_sections(top: dict[str, Any], config: GatewayConfig, problems: list[str]) -> GatewayConfig:
    if top.get("interactive") is not None:
        config = replace(config, interactive=_parse_interactive(top["interactive"], problems))
    if top.get("metrics") is not None:
        config = replace(config, metrics=_parse_metrics(top["metrics"], problems))
    for key in _SECTIONS:
        if top.get(key) is not None:
            config = replace(config, **{key: _parse_section(top[key], key, getattr(config, key), problems)})
    with contextlib.suppress(ValueError):  # a malformed URL is the checks' problem
        register_secret(urlsplit(config.limits.backend).password)  # redis://:PASSWORD@host
    return config


def _parse_section(raw: Any, key: str, template: _Section, problems: list[str]) -> _Section:
    entry = mapping(raw, key, problems)
    names = set(template.__dataclass_fields__)
    unknown_keys(entry, names, f"{key}.", problems)
    values: dict[str, Any] = {}
    for name in sorted(set(entry) & names):
        current, value = getattr(template, name), entry[name]
        if isinstance(current, bool):
            if not isinstance(value, bool):
                problems.append(f"{key}.{name}: expected true or false, got {value!r}")
                continue
            values[name] = value
        elif isinstance(current, str):
            if not isinstance(value, str):
                problems.append(f"{key}.{name}: expected a string, got {value!r}")
                continue
            values[name] = value
        elif value is None and current is None:
            continue  # an optional setting left off
        else:
            maximum, whole = range_of(name, current)
            parsed = number(value, f"{key}.{name}", problems, minimum=0, maximum=maximum, whole=whole)
            if parsed is not None:
                values[name] = int(parsed) if isinstance(current, int) else parsed
    return replace(template, **values)


def _parse_interactive(raw: Any, problems: list[str]) -> InteractiveConfig:
    entry = mapping(raw, "interactive", problems)
    fields = set(InteractiveConfig.__dataclass_fields__)
    unknown_keys(entry, fields, "interactive.", problems)
    limits = InteractiveConfig()
    return replace(limits, **numbers(entry, sorted(set(entry) & fields), "interactive.", limits, problems, minimum=1))


def _parse_metrics(raw: Any, problems: list[str]) -> MetricsConfig:
    entry = mapping(raw, "metrics", problems)
    unknown_keys(entry, set(MetricsConfig.__dataclass_fields__), "metrics.", problems)
    listen = entry.get("listen")
    return MetricsConfig(listen=None if listen is None else str(listen))


def _parse_tls(raw: Any, base_dir: Path, problems: list[str]) -> TLSConfig | None:
    tls = mapping(raw, "tls", problems)
    unknown_keys(tls, {"cert_file", "key_file", "client_ca_file"}, "tls.", problems)
    paths = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        if not tls.get(key):
            if key != "client_ca_file":
                problems.append(f"tls.{key}: required")
            continue
        path = Path(str(tls[key]))
        paths[key] = path if path.is_absolute() else base_dir / path
    if "cert_file" not in paths or "key_file" not in paths:
        return None
    return TLSConfig(paths["cert_file"], paths["key_file"], client_ca_file=paths.get("client_ca_file"))


def _parse_auth(raw: Any, env: Mapping[str, str], problems: list[str]) -> AuthConfig:
    auth = mapping(raw, "auth", problems)
    unknown_keys(auth, {"tokens"}, "auth.", problems)
    tokens = []
    for i, item in enumerate(as_list(auth.get("tokens", []), "auth.tokens", problems)):
        token = _parse_token(item, i, env, problems)
        if token is not None:
            tokens.append(token)
    if not tokens and not problems:
        problems.append("auth.tokens: at least one token is required when auth is configured")
    return AuthConfig(tokens=tuple(tokens))


def _parse_token(raw: Any, i: int, env: Mapping[str, str], problems: list[str]) -> ClientToken | None:
    where = f"auth.tokens[{i}]"
    entry = mapping(raw, where, problems)
    unknown_keys(entry, {"name", "sha256", "env"}, f"{where}.", problems)
    if ("sha256" in entry) == ("env" in entry):
        problems.append(f"{where}: give exactly one of sha256 (hex digest of the token) or env")
        return None
    if "sha256" in entry:
        digest = hex_digest(str(entry["sha256"]), where, problems)
    else:
        digest = env_digest(str(entry["env"]), env, where, problems)
    if digest is None:
        return None
    return ClientToken(name=str(entry.get("name") or f"client-{i}"), sha256=digest)


def _parse_providers(
    raw: Any, env: Mapping[str, str], problems: list[str], unparsed: set[str], base_dir: Path
) -> tuple[ProviderConfig, ...]:
    providers = []
    for i, item in enumerate(as_list(raw, "providers", problems)):
        before = len(problems)
        provider = _parse_provider(item, f"providers[{i}]", env, problems, base_dir)
        if provider is None or len(problems) > before:
            unparsed.add(str(item.get("name", "")) if isinstance(item, dict) else "")
        if provider is not None:
            providers.append(provider)
    return tuple(providers)


def _parse_provider(
    raw: Any, where: str, env: Mapping[str, str], problems: list[str], base_dir: Path
) -> ProviderConfig | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, _PROVIDER_KEYS, f"{where}.", problems)
    name = str(entry.get("name") or "")
    if not name:
        problems.append(f"{where}.name: required")
    kind = _provider_kind(entry, PROVIDER_PRESETS.get(name), where, problems)
    if kind is None:
        return None
    provider = ProviderConfig(name=name, kind=kind)
    if kind not in OFFLINE_KINDS:
        provider = _with_upstream(provider, entry, where, env, problems, base_dir)
    if "transport" in entry and (transport := _transport(entry["transport"], where, problems)) is not None:
        provider = replace(provider, transport=transport)
    return replace(provider, **numbers(entry, _PROVIDER_NUMBERS, f"{where}.", provider, problems, minimum=1e-3))


def _provider_kind(
    entry: dict[str, Any], preset: ProviderPreset | None, where: str, problems: list[str]
) -> ProviderKind | None:
    """The entry's kind; a preset's name (openai, deepseek …) implies the preset's kind."""
    kind = str(entry.get("kind") or (preset.kind if preset else ""))
    if is_provider_kind(kind):
        return kind
    problems.append(f"{where}.kind: expected one of {', '.join(PROVIDER_KINDS)}, got {kind!r}")
    return None


def _transport(raw: Any, where: str, problems: list[str]) -> TransportName | None:
    for transport in TRANSPORTS:
        if raw == transport:
            return transport
    problems.append(f"{where}.transport: expected one of {', '.join(TRANSPORTS)}, got {raw!r}")
    return None


def _with_upstream(
    provider: ProviderConfig,
    entry: dict[str, Any],
    where: str,
    env: Mapping[str, str],
    problems: list[str],
    base_dir: Path,
) -> ProviderConfig:
    """The upstream's address and key; a preset of the same kind fills in what the entry leaves out."""
    preset = PROVIDER_PRESETS.get(provider.name)
    same_preset = preset if preset and preset.kind == provider.kind else None
    base_url = str(entry.get("base_url") or (same_preset.base_url if same_preset else ""))
    if not base_url.startswith(("http://", "https://")):
        problems.append(f"{where}.base_url: required, an http:// or https:// URL")
    if entry.get("api_key_file") is not None:
        if entry.get("api_key_env") is not None:
            problems.append(f"{where}: give api_key_env or api_key_file, not both")
        files = _key_names(entry["api_key_file"], f"{where}.api_key_file", problems)
        keys = [_key_from_file(name, base_dir, f"{where}.api_key_file", problems) for name in files]
    else:
        key_envs = _key_names(entry.get("api_key_env"), f"{where}.api_key_env", problems)
        keys = [ApiKey(name, _secret(name, env, f"{where}.api_key_env", problems)) for name in key_envs]
    if not keys:  # a preset's usual variable, or none: a keyless upstream
        preset_env = _preset_key_env(same_preset, env)
        keys = [ApiKey(preset_env, _secret(preset_env, env, f"{where}.api_key_env", problems))]
    signing_env = str(entry.get("signing_secret_env") or "")
    signing_secret = _secret(signing_env, env, f"{where}.signing_secret_env", problems)
    return replace(
        provider,
        base_url=base_url.rstrip("/"),
        api_key_env=keys[0].env,
        api_key=keys[0].value,
        extra_api_keys=tuple(keys[1:]),
        signing_secret_env=signing_env,
        signing_secret=signing_secret,
    )


def _key_names(raw: Any, where: str, problems: list[str]) -> list[str]:
    """`api_key_env` (variable names) or `api_key_file` (paths) as a list: one, or a pool used in turn."""
    if raw is None or raw == "":
        return []
    names = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
    if names is None or not names or not all(isinstance(name, str) and name for name in names):
        problems.append(f"{where}: expected a name or a non-empty list of them")
        return []
    if len(set(names)) != len(names):
        problems.append(f"{where}: a name is listed twice")
    return list(names)


def _key_from_file(name: str, base_dir: Path, where: str, problems: list[str]) -> ApiKey:
    """The key in the file `name` (relative to the config file), registered as a secret. A mounted secret
    file changes in place when it is rotated, so a reload picks the new key up; a variable cannot change."""
    path = Path(name) if Path(name).is_absolute() else base_dir / name
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        problems.append(f"{where}: cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}")
        value = ""
    else:
        if not value:
            problems.append(f"{where}: {path} is empty")
    register_secret(value)
    return ApiKey(name, value)


def _secret(variable: str, env: Mapping[str, str], where: str, problems: list[str]) -> str:
    """The value of `variable`, registered as a secret; "" when no variable is named (a keyless upstream)."""
    if not variable:
        return ""
    value = env.get(variable, "")
    if not value:
        problems.append(f"{where}: environment variable {variable} is not set or empty")
    register_secret(value)
    return value


def _preset_key_env(preset: ProviderPreset | None, env: Mapping[str, str]) -> str:
    """A preset's usual key variable (the first one set); without it the upstream would answer 401 on every call."""
    if preset is None:
        return ""
    return next((v for v in preset.key_envs if env.get(v)), preset.key_envs[0])


def _parse_models(
    raw: Any, problems: list[str], unparsed: set[str], kinds: Mapping[str, str]
) -> tuple[ModelConfig, ...]:
    raw_models = as_list(raw, "models", problems)
    models = [parse_model(item, f"models[{i}]", problems, kinds) for i, item in enumerate(raw_models)]
    parsed = tuple(model for model in models if model is not None)
    if raw_models and not parsed:
        unparsed.add("models")  # every entry is invalid, and each says why
    return parsed
