"""Cross-field checks of a `GatewayConfig`: rules that hold whatever the source of the config.

`checked(config)` runs every check and raises one `ConfigError` listing all the problems found; each check
is a small function that yields the problems of one rule, in the order a reader of the file meets them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from server.config.schema import ConfigError, GatewayConfig
from server.observe.logs import LOG_FORMATS
from server.routing.catalog import BUILTIN_ALIASES

__all__ = ["checked", "is_loopback_host", "parse_listen"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# What each TLS file must hold: a PEM block of this type (any private key: PKCS#8, RSA or EC).
_PEM_BLOCKS = {
    "cert_file": (re.compile(rb"-----BEGIN CERTIFICATE-----"), "a PEM certificate", "-----BEGIN CERTIFICATE-----"),
    "key_file": (
        re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        "a PEM private key",
        "-----BEGIN PRIVATE KEY-----",
    ),
}
# Certificate chains and keys are a few KiB; reading no more keeps a mistyped path (a log file) cheap.
_MAX_PEM_BYTES = 1 << 20


def checked(config: GatewayConfig, *, unparsed: frozenset[str] = frozenset()) -> GatewayConfig:
    """`config` itself when every check passes; otherwise a ConfigError listing every problem.

    `unparsed` holds the names of file entries that already have a problem of their own; checks that
    would only repeat it (a model naming a provider whose entry was invalid) are skipped.
    """
    problems = [
        *_listen_problems(config),
        *_metrics_listen_problems(config),
        *_tls_file_problems(config),
        *_log_level_problems(config),
        *_log_format_problems(config),
        *_duplicate_names("providers", [p.name for p in config.providers]),
        *_duplicate_names("models", [m.name for m in config.models]),
        *_deployment_problems(config, unparsed),
        *_alias_problems(config),
        *_fallback_problems(config),
        *_shadow_problems(config),
        *_model_count_problems(config, unparsed),
        *_resilience_problems(config),
        *_client_problems(config),
        *_limits_backend_problems(config),
    ]
    if problems:
        raise ConfigError("\n".join(problems))
    return config


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


def _listen_problems(config: GatewayConfig) -> Iterator[str]:
    try:
        host, _ = parse_listen(config.listen)
    except ConfigError as exc:
        yield str(exc)
        return
    if not config.authenticates and not is_loopback_host(host):
        yield (
            f"listen: refusing to serve without auth on non-loopback address {host}; configure "
            "clients (or auth.tokens), or listen on 127.0.0.1"
        )


def _metrics_listen_problems(config: GatewayConfig) -> Iterator[str]:
    if config.metrics.listen is not None:
        try:
            parse_listen(config.metrics.listen)
        except ConfigError as exc:
            yield f"metrics.{exc}"


def _tls_file_problems(config: GatewayConfig) -> Iterator[str]:
    """Each TLS file exists, can be read, and holds the PEM block it should: checked now, so that a missing
    file is a config problem naming it, not a failure to listen."""
    if config.tls is None:
        return
    files = [("cert_file", config.tls.cert_file), ("key_file", config.tls.key_file)]
    if config.tls.client_ca_file is not None:
        files.append(("client_ca_file", config.tls.client_ca_file))
    for key, path in files:
        pattern, what, example = _PEM_BLOCKS["cert_file" if key == "client_ca_file" else key]
        problem = _pem_file_problem(path, pattern, what, example)
        if problem:
            yield f"tls.{key}: {path}: {problem}"


def _pem_file_problem(path: Path, pattern: re.Pattern[bytes], what: str, example: str) -> str:
    """What is wrong with the PEM file at `path`, or "". Never any of its content: it may be a key."""
    try:
        with path.open("rb") as file:
            head = file.read(_MAX_PEM_BYTES)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or type(exc).__name__}"
    if not pattern.search(head):
        return f'not {what} (no "{example}" line)'
    return ""


def _log_level_problems(config: GatewayConfig) -> Iterator[str]:
    if config.log_level not in _LOG_LEVELS:
        yield f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {config.log_level!r}"


def _limits_backend_problems(config: GatewayConfig) -> Iterator[str]:
    limits = config.limits
    if limits.backend != "memory" and urlsplit(limits.backend).scheme not in ("redis", "rediss", "unix"):
        yield "limits.backend: expected memory or a redis://, rediss:// or unix:// URL"  # the URL may hold a password
    if limits.backend_unavailable not in ("open", "closed"):
        yield f"limits.backend_unavailable: expected open or closed, got {limits.backend_unavailable[:40]!r}"
    if limits.backend_timeout_s <= 0:
        yield "limits.backend_timeout_s: must be more than 0"


def _log_format_problems(config: GatewayConfig) -> Iterator[str]:
    if config.log_format not in LOG_FORMATS:
        yield f"log.format: expected {' or '.join(LOG_FORMATS)}, got {config.log_format!r}"


def _duplicate_names(section: str, names: list[str]) -> Iterator[str]:
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        yield f"{section}: name {name!r} is used more than once"


def _deployment_problems(config: GatewayConfig, unparsed: frozenset[str]) -> Iterator[str]:
    """Each model's deployments name configured providers, and at least one of them carries weight."""
    known = {p.name for p in config.providers} | unparsed
    for model in config.models:
        for deployment in model.all_deployments:
            if deployment.provider not in known:
                yield f"models: model {model.name!r} names provider {deployment.provider!r}, which is not configured"
        if model.deployments and not sum(d.weight for d in model.deployments) > 0:
            yield f"models: model {model.name!r} has no deployment with a weight above 0"


def _alias_problems(config: GatewayConfig) -> Iterator[str]:
    """An alias is no model's name, and an `aliases:` entry points at a model."""
    model_names = {m.name for m in config.models}
    taken = set(model_names)
    for model in config.models:
        for alias in model.aliases:
            if alias in taken:
                yield f"models: alias {alias!r} of model {model.name!r} is already a name"
            taken.add(alias)
    names = _catalog_names(config)
    for alias, target in config.aliases:
        if alias in model_names:
            yield f"aliases: {alias!r} is already a model name"
        if not _names_a_model(target, names):
            yield f"aliases: {alias!r} points to {target!r}, which is not a model"


def _fallback_problems(config: GatewayConfig) -> Iterator[str]:
    names = _catalog_names(config)
    for model in config.models:
        for fallback in model.all_fallbacks:
            if fallback == model.name or not _names_a_model(fallback, names):
                yield f"models: fallback {fallback!r} of model {model.name!r} is not another model"


def _shadow_problems(config: GatewayConfig) -> Iterator[str]:
    """A shadow's target is another model, or a deployment: a deployment's name or "provider/upstream_model"
    of a configured provider."""
    names = _catalog_names(config)
    labels = {d.label for m in config.models for d in m.all_deployments}
    providers = {p.name for p in config.providers}
    for model in config.models:
        shadow = model.shadow
        if shadow is None:
            continue
        if shadow.model and (shadow.model == model.name or not _names_a_model(shadow.model, names)):
            yield f"models: shadow model {shadow.model!r} of model {model.name!r} is not another model"
        target = shadow.deployment
        if target and target not in labels and target.partition("/")[0] not in providers:
            yield (
                f"models: shadow deployment {target!r} of model {model.name!r} is neither a deployment's name "
                "nor provider/upstream_model of a configured provider"
            )


def _catalog_names(config: GatewayConfig) -> set[str]:
    """Every name the config gives a model: model names, their aliases and the `aliases:` entries."""
    models = config.models
    return {m.name for m in models} | {a for m in models for a in m.aliases} | {a for a, _ in config.aliases}


def _names_a_model(name: str, names: set[str]) -> bool:
    # "provider/model" names a built-in or pass-through model, resolved by the catalog at call time.
    return "/" in name or name in names or name in BUILTIN_ALIASES


def _model_count_problems(config: GatewayConfig, unparsed: frozenset[str]) -> Iterator[str]:
    if not config.models and "models" not in unparsed:
        yield "models: at least one model is required"


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
        (limits.max_pending_calls >= 1, "limits.max_pending_calls: must be at least 1"),
        (keepalive.time_s > 0 and keepalive.timeout_s > 0, "keepalive: time_s and timeout_s must be above 0"),
    ]
    return [problem for ok, problem in checks if not ok]


def _client_problems(config: GatewayConfig) -> Iterator[str]:
    """Client names, tokens and certificate names each name one client; certificates need a client CA;
    every `models` entry names a model, an alias, a configured provider's `provider/*`, or `*`."""
    token_names = {token.name for token in config.auth.tokens} if config.auth else set()
    yield from _duplicate_names("clients", [c.name for c in config.clients])
    for name in sorted(token_names & {c.name for c in config.clients}):
        yield f"clients: name {name!r} is also an auth.tokens name: give its tokens in its clients entry"
    owners: dict[bytes | str, str] = {}
    if config.auth:
        owners.update((token.sha256, token.name) for token in config.auth.tokens)
    for client in config.clients:
        credentials: list[bytes | str] = [*client.tokens, *client.certificates]
        for credential in credentials:
            owner = owners.setdefault(credential, client.name)
            if owner != client.name:
                what = "a certificate name" if isinstance(credential, str) else "a token"
                yield f"clients: {what} of {client.name!r} is also one of {owner!r}: a credential names one client"
        if client.certificates and (config.tls is None or config.tls.client_ca_file is None):
            yield f"clients: {client.name!r} has certificates, which need tls.client_ca_file (mTLS)"
    names = _catalog_names(config)
    providers = {p.name for p in config.providers}
    lists = [("client_defaults.models", config.client_defaults.models)]
    lists += [(f"clients: {c.name!r} models", c.models) for c in config.clients if c.models is not None]
    for where, models in lists:
        for entry in models:
            if entry.endswith("/*") and entry[:-2] not in providers:
                yield f"{where}: {entry!r} names no configured provider"
            elif entry != "*" and not entry.endswith("/*") and not _names_a_model(entry, names):
                yield f"{where}: {entry!r} is not a model"
