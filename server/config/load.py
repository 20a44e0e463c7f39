"""Typed gateway configuration: a YAML file, environment overrides, and the embedded default.

Precedence, highest first: command-line flags, environment variables, the YAML file, `defaults.py`.

    GATEWAY_LISTEN              host:port to listen on
    GATEWAY_GRACE_PERIOD_S      seconds in-flight calls may run after SIGTERM/SIGINT
    GATEWAY_MAX_REQUEST_BYTES   cap on the total message content of one request
    GATEWAY_LOG_LEVEL           DEBUG, INFO, WARNING, ERROR
    GATEWAY_LOG_FORMAT          text or json (one JSON object per line)

Secrets enter here and nowhere else: upstream keys are read from the variables that `api_key_env`
names, client tokens are kept only as sha256 digests, and every secret is registered with
`errors.register_secret` so that no error can carry it out.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from server import defaults
from server.config.models import parse_model
from server.config.readers import as_list, mapping, number, unknown_keys
from server.errors import register_secret
from server.observe.logs import LOG_FORMATS
from server.resilience.breaker import BreakerPolicy
from server.resilience.retry import RetryPolicy
from server.routing.catalog import BUILTIN_ALIASES, PROVIDER_PRESETS, Deployment, ModelConfig, Price

__all__ = [
    "AuthConfig",
    "ClientToken",
    "ConfigError",
    "Deployment",
    "GatewayConfig",
    "InteractiveConfig",
    "KeepaliveConfig",
    "LimitsConfig",
    "ModelConfig",
    "Price",
    "ProviderConfig",
    "TLSConfig",
    "default_config",
    "is_loopback_host",
    "load_config",
    "parse_listen",
]

ProviderKind = Literal["openai", "anthropic", "gemini", "demo"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = ("openai", "anthropic", "gemini", "demo")


class ConfigError(ValueError):
    """The configuration is invalid. The message lists every problem, one per line."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ClientToken:
    """A client allowed to call the gateway. Only the sha256 digest of its token is kept."""

    name: str
    sha256: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    tokens: tuple[ClientToken, ...]


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: ProviderKind
    base_url: str = ""
    api_key_env: str = ""
    # The key itself, read from `api_key_env`; empty for keyless upstreams (local servers, demo).
    api_key: str = field(default="", repr=False)
    connect_timeout_s: float = defaults.CONNECT_TIMEOUT_S
    read_timeout_s: float = defaults.READ_TIMEOUT_S
    max_connections: int = defaults.POOL_MAX_CONNECTIONS
    # Upstream calls in flight at once; 0 means max_connections. Over it, calls go elsewhere or are refused.
    max_concurrent_streams: int = 0
    # Streams only: the longest wait for the first token, and the longest silence between events after it.
    first_token_timeout_s: float = defaults.FIRST_TOKEN_TIMEOUT_S
    stream_idle_timeout_s: float = defaults.STREAM_IDLE_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class InteractiveConfig:
    """Limits of InteractiveStream sessions (config key `interactive`); see defaults.py for each one."""

    max_in_flight: int = defaults.INTERACTIVE_MAX_IN_FLIGHT
    max_queued_turns: int = defaults.INTERACTIVE_MAX_QUEUED_TURNS
    queue_size: int = defaults.INTERACTIVE_QUEUE_SIZE
    max_history_messages: int = defaults.INTERACTIVE_MAX_HISTORY_MESSAGES
    max_history_bytes: int = defaults.INTERACTIVE_MAX_HISTORY_BYTES


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Load shedding (config key `limits`): upstream calls in flight per process, and the RetryInfo delay
    of a call refused for being over a limit."""

    max_concurrent_upstream: int = defaults.MAX_CONCURRENT_UPSTREAM
    retry_after_s: float = defaults.OVERLOAD_RETRY_AFTER_S


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """HTTP/2 keepalive and connection age of the gRPC server (config key `keepalive`); None is off."""

    time_s: float = defaults.KEEPALIVE_TIME_S
    timeout_s: float = defaults.KEEPALIVE_TIMEOUT_S
    min_client_ping_interval_s: float = defaults.KEEPALIVE_MIN_CLIENT_PING_INTERVAL_S
    max_connection_age_s: float | None = None
    max_connection_age_grace_s: float | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: str = defaults.DEFAULT_LISTEN
    tls: TLSConfig | None = None
    auth: AuthConfig | None = None
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    # Extra names for catalog models (including tier names such as "simple" or "advanced").
    aliases: tuple[tuple[str, str], ...] = ()
    grace_period_s: float = defaults.GRACE_PERIOD_S
    max_request_bytes: int = defaults.MAX_REQUEST_CONTENT_BYTES
    log_level: str = "INFO"
    log_format: str = "text"  # or "json" (config `log.format`)
    interactive: InteractiveConfig = InteractiveConfig()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    circuit_breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    limits: LimitsConfig = LimitsConfig()
    keepalive: KeepaliveConfig = KeepaliveConfig()

    def with_listen(self, listen: str) -> GatewayConfig:
        """This config listening on `listen` (tests use 127.0.0.1:0)."""
        return _checked(replace(self, listen=listen))


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port"); raises ConfigError when it is not one."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port_text)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_config(env: Mapping[str, str] | None = None, *, listen: str | None = None) -> GatewayConfig:
    """The embedded default: the offline demo model on 127.0.0.1:50051, plaintext, no auth.

    Each provider preset (openai, anthropic, gemini, deepseek, holysheep) whose key variable is set is
    enabled beside the demo, with its built-in catalog models; `<NAME>_BASE_URL` (for example
    OPENAI_BASE_URL) replaces a preset's address.
    """
    env = os.environ if env is None else env
    providers = [ProviderConfig(name="demo", kind="demo")]
    for name, preset in PROVIDER_PRESETS.items():
        key_env = next((var for var in preset.key_envs if env.get(var)), None)
        if key_env is None:
            continue
        register_secret(env[key_env])
        providers.append(
            ProviderConfig(
                name=name,
                kind=preset.kind,  # type: ignore[arg-type]  # presets use known kinds
                base_url=(env.get(f"{name.upper()}_BASE_URL") or preset.base_url).rstrip("/"),
                api_key_env=key_env,
                api_key=env[key_env],
            )
        )
    models = (ModelConfig(name="demo", provider="demo", upstream_model="demo"),)
    config = _apply_env(GatewayConfig(providers=tuple(providers), models=models), env)
    return _checked(replace(config, listen=listen) if listen else config)


def load_config(path: Path | None, env: Mapping[str, str] | None = None, *, listen: str | None = None) -> GatewayConfig:
    """Load the YAML file at `path` (or the embedded default when None), then apply the environment and
    the `listen` flag, which wins over both."""
    env = os.environ if env is None else env
    if path is None:
        return default_config(env, listen=listen)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    problems: list[str] = []
    unparsed: set[str] = set()
    config = _parse(raw if raw is not None else {}, path.parent, env, problems, unparsed)
    try:
        config = _apply_env(config, env)
        config = _checked(replace(config, listen=listen) if listen else config, unparsed=frozenset(unparsed))
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return config


# --- parsing -------------------------------------------------------------------------------------------


def _parse(raw: Any, base_dir: Path, env: Mapping[str, str], problems: list[str], unparsed: set[str]) -> GatewayConfig:
    top = mapping(raw, "config", problems)
    unknown_keys(
        top,
        {
            *("listen", "tls", "auth", "providers", "models", "aliases"),
            *("grace_period_s", "max_request_bytes", "log_level", "log", "interactive"),
            *_SECTIONS,
        },
        "",
        problems,
    )
    config = GatewayConfig()
    if "listen" in top:
        config = replace(config, listen=str(top["listen"]))
    if top.get("tls") is not None:
        config = replace(config, tls=_parse_tls(top["tls"], base_dir, problems))
    if top.get("auth") is not None:
        config = replace(config, auth=_parse_auth(top["auth"], env, problems))
    providers = []
    for i, item in enumerate(as_list(top.get("providers", []), "providers", problems)):
        before = len(problems)
        provider = _parse_provider(item, f"providers[{i}]", env, problems)
        if provider is None or len(problems) > before:
            unparsed.add(str(item.get("name", "")) if isinstance(item, dict) else "")
        if provider is not None:
            providers.append(provider)
    models = []
    raw_models = as_list(top.get("models", []), "models", problems)
    for i, item in enumerate(raw_models):
        model = parse_model(item, f"models[{i}]", problems)
        if model is not None:
            models.append(model)
    if raw_models and not models:
        unparsed.add("models")  # every entry is invalid, and each says why
    config = replace(config, providers=tuple(providers), models=tuple(models))
    if top.get("aliases") is not None:
        aliases = mapping(top["aliases"], "aliases", problems)
        config = replace(config, aliases=tuple((str(k), str(v)) for k, v in aliases.items()))
    for key in ("grace_period_s", "max_request_bytes"):
        if key in top:
            value = number(top[key], key, problems, minimum=0)
            if value is not None:
                config = replace(config, **{key: type(getattr(config, key))(value)})
    if "log_level" in top:
        config = replace(config, log_level=str(top["log_level"]).upper())
    if top.get("log") is not None:
        config = _parse_log(top["log"], config, "log_level" in top, problems)
    if top.get("interactive") is not None:
        config = replace(config, interactive=_parse_interactive(top["interactive"], problems))
    for key in _SECTIONS:
        if top.get(key) is not None:
            config = replace(config, **{key: _parse_section(top[key], key, getattr(config, key), problems)})
    return config


# Sections of numbers (and booleans) that map one to one onto a frozen dataclass of the config.
_SECTIONS = ("retry", "circuit_breaker", "limits", "keepalive")
_Section = TypeVar("_Section", RetryPolicy, BreakerPolicy, LimitsConfig, KeepaliveConfig)


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
        elif value is None and current is None:
            continue  # an optional setting left off
        elif (parsed := number(value, f"{key}.{name}", problems, minimum=0)) is not None:
            values[name] = int(parsed) if isinstance(current, int) else parsed
    return replace(template, **values)


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


def _parse_interactive(raw: Any, problems: list[str]) -> InteractiveConfig:
    entry = mapping(raw, "interactive", problems)
    limits = InteractiveConfig()
    unknown_keys(entry, set(InteractiveConfig.__dataclass_fields__), "interactive.", problems)
    for key in sorted(set(entry) & set(InteractiveConfig.__dataclass_fields__)):
        value = number(entry[key], f"interactive.{key}", problems, minimum=1)
        if value is not None:
            limits = replace(limits, **{key: int(value)})
    return limits


def _parse_tls(raw: Any, base_dir: Path, problems: list[str]) -> TLSConfig | None:
    tls = mapping(raw, "tls", problems)
    unknown_keys(tls, {"cert_file", "key_file"}, "tls.", problems)
    paths = {}
    for key in ("cert_file", "key_file"):
        if not tls.get(key):
            problems.append(f"tls.{key}: required")
            continue
        path = Path(str(tls[key]))
        paths[key] = path if path.is_absolute() else base_dir / path
    if len(paths) < 2:
        return None
    return TLSConfig(cert_file=paths["cert_file"], key_file=paths["key_file"])


def _parse_auth(raw: Any, env: Mapping[str, str], problems: list[str]) -> AuthConfig:
    auth = mapping(raw, "auth", problems)
    unknown_keys(auth, {"tokens"}, "auth.", problems)
    tokens = []
    for i, item in enumerate(as_list(auth.get("tokens", []), "auth.tokens", problems)):
        where = f"auth.tokens[{i}]"
        entry = mapping(item, where, problems)
        unknown_keys(entry, {"name", "sha256", "env"}, f"{where}.", problems)
        name = str(entry.get("name") or f"client-{i}")
        if ("sha256" in entry) == ("env" in entry):
            problems.append(f"{where}: give exactly one of sha256 (hex digest of the token) or env")
            continue
        if "sha256" in entry:
            try:
                digest = bytes.fromhex(str(entry["sha256"]))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                problems.append(f"{where}.sha256: expected 64 hex characters (sha256 of the token)")
                continue
        else:
            token = env.get(str(entry["env"]), "")
            if not token:
                problems.append(f"{where}.env: environment variable {entry['env']} is not set or empty")
                continue
            register_secret(token)
            digest = hashlib.sha256(token.encode()).digest()
        tokens.append(ClientToken(name=name, sha256=digest))
    if not tokens and not problems:
        problems.append("auth.tokens: at least one token is required when auth is configured")
    return AuthConfig(tokens=tuple(tokens))


def _parse_provider(raw: Any, where: str, env: Mapping[str, str], problems: list[str]) -> ProviderConfig | None:
    entry = mapping(raw, where, problems)
    known = {"name", "kind", "base_url", "api_key_env", *_PROVIDER_NUMBERS}
    unknown_keys(entry, known, f"{where}.", problems)
    name = str(entry.get("name") or "")
    preset = PROVIDER_PRESETS.get(name)
    kind = str(entry.get("kind") or (preset.kind if preset else ""))
    if not name:
        problems.append(f"{where}.name: required")
    if kind not in PROVIDER_KINDS:
        problems.append(f"{where}.kind: expected one of {', '.join(PROVIDER_KINDS)}, got {kind!r}")
        return None
    provider = ProviderConfig(name=name, kind=kind)  # kind: checked just above
    if kind != "demo":
        same_preset = preset if preset and preset.kind == kind else None
        base_url = str(entry.get("base_url") or (same_preset.base_url if same_preset else ""))
        if not base_url.startswith(("http://", "https://")):
            problems.append(f"{where}.base_url: required, an http:// or https:// URL")
        api_key_env = str(entry.get("api_key_env") or "")
        if not api_key_env and same_preset:
            # A preset takes its usual variable; without it the upstream would answer 401 on every call.
            api_key_env = next((v for v in same_preset.key_envs if env.get(v)), same_preset.key_envs[0])
        api_key = env.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not api_key:
            problems.append(f"{where}.api_key_env: environment variable {api_key_env} is not set or empty")
        register_secret(api_key)
        provider = replace(provider, base_url=base_url.rstrip("/"), api_key_env=api_key_env, api_key=api_key)
    for key in _PROVIDER_NUMBERS:
        if key in entry:
            value = number(entry[key], f"{where}.{key}", problems, minimum=1e-3)
            if value is not None:
                provider = replace(provider, **{key: type(getattr(provider, key))(value)})
    return provider


_PROVIDER_NUMBERS = (
    *("connect_timeout_s", "read_timeout_s", "max_connections"),
    *("max_concurrent_streams", "first_token_timeout_s", "stream_idle_timeout_s"),
)


def _apply_env(config: GatewayConfig, env: Mapping[str, str]) -> GatewayConfig:
    problems: list[str] = []
    if env.get("GATEWAY_LISTEN"):
        config = replace(config, listen=env["GATEWAY_LISTEN"])
    if env.get("GATEWAY_LOG_LEVEL"):
        config = replace(config, log_level=env["GATEWAY_LOG_LEVEL"].upper())
    if env.get("GATEWAY_LOG_FORMAT"):
        config = replace(config, log_format=env["GATEWAY_LOG_FORMAT"].lower())
    for var, key in (
        ("GATEWAY_GRACE_PERIOD_S", "grace_period_s"),
        ("GATEWAY_MAX_REQUEST_BYTES", "max_request_bytes"),
    ):
        if env.get(var):
            value = number(env[var], var, problems, minimum=0)
            if value is not None:
                config = replace(config, **{key: type(getattr(config, key))(value)})
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _checked(config: GatewayConfig, *, unparsed: frozenset[str] = frozenset()) -> GatewayConfig:
    """Cross-field checks that hold whatever the source of the config.

    `unparsed` holds the names of file entries that already have a problem of their own; checks that
    would only repeat it (a model naming a provider whose entry was invalid) are skipped.
    """
    problems: list[str] = []
    try:
        host, _ = parse_listen(config.listen)
    except ConfigError as exc:
        problems.append(str(exc))
    else:
        if config.auth is None and not is_loopback_host(host):
            problems.append(
                f"listen: refusing to serve without auth on non-loopback address {host}; configure "
                "auth.tokens, or listen on 127.0.0.1"
            )
    if config.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {config.log_level!r}")
    if config.log_format not in LOG_FORMATS:
        problems.append(f"log.format: expected {' or '.join(LOG_FORMATS)}, got {config.log_format!r}")
    provider_names = [p.name for p in config.providers]
    for name in {n for n in provider_names if provider_names.count(n) > 1}:
        problems.append(f"providers: name {name!r} is used more than once")
    model_names = [m.name for m in config.models]
    for name in {n for n in model_names if model_names.count(n) > 1}:
        problems.append(f"models: name {name!r} is used more than once")
    for model in config.models:
        for deployment in model.all_deployments:
            if deployment.provider not in provider_names and deployment.provider not in unparsed:
                problems.append(
                    f"models: model {model.name!r} names provider {deployment.provider!r}, which is not configured"
                )
        if model.deployments and not sum(d.weight for d in model.deployments) > 0:
            problems.append(f"models: model {model.name!r} has no deployment with a weight above 0")
    names = set(model_names) | {a for m in config.models for a in m.aliases} | {a for a, _ in config.aliases}
    taken = set(model_names)
    for model in config.models:
        for alias in model.aliases:
            if alias in taken:
                problems.append(f"models: alias {alias!r} of model {model.name!r} is already a name")
            taken.add(alias)
    for alias, target in config.aliases:
        if alias in set(model_names):
            problems.append(f"aliases: {alias!r} is already a model name")
        if "/" not in target and target not in names and target not in BUILTIN_ALIASES:
            problems.append(f"aliases: {alias!r} points to {target!r}, which is not a model")
    for model in config.models:
        for fallback in model.all_fallbacks:
            if fallback == model.name or (
                "/" not in fallback and fallback not in names and fallback not in BUILTIN_ALIASES
            ):
                problems.append(f"models: fallback {fallback!r} of model {model.name!r} is not another model")
    if not config.models and "models" not in unparsed:
        problems.append("models: at least one model is required")
    problems += _resilience_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _resilience_problems(config: GatewayConfig) -> list[str]:
    """Settings of retry, circuit_breaker, limits and keepalive that cannot work (zero is read as "off"
    only where the README says so)."""
    retry, breaker, limits, keepalive = config.retry, config.circuit_breaker, config.limits, config.keepalive
    checks = [
        (retry.max_attempts >= 1, "retry.max_attempts: must be at least 1 (1 turns retries off)"),
        (retry.backoff_cap_s >= retry.backoff_base_s, "retry.backoff_cap_s: must be at least backoff_base_s"),
        (breaker.consecutive_failures >= 1, "circuit_breaker.consecutive_failures: must be at least 1"),
        (0 < breaker.failure_ratio <= 1, "circuit_breaker.failure_ratio: must be above 0 and at most 1"),
        (breaker.min_requests >= 1, "circuit_breaker.min_requests: must be at least 1"),
        (breaker.window_s > 0 and breaker.cooldown_s > 0, "circuit_breaker: window_s and cooldown_s must be above 0"),
        (limits.max_concurrent_upstream >= 1, "limits.max_concurrent_upstream: must be at least 1"),
        (keepalive.time_s > 0 and keepalive.timeout_s > 0, "keepalive: time_s and timeout_s must be above 0"),
    ]
    return [problem for ok, problem in checks if not ok]
