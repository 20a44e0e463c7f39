"""Where a gateway configuration comes from: a YAML file, environment overrides, and the embedded default.

Precedence, highest first: command-line flags, environment variables, the YAML file, `defaults.py`.

    GATEWAY_LISTEN              host:port to listen on
    GATEWAY_GRACE_PERIOD_S      seconds in-flight calls may run after SIGTERM/SIGINT
    GATEWAY_MAX_REQUEST_BYTES   cap on the total message content of one request
    GATEWAY_LOG_LEVEL           DEBUG, INFO, WARNING, ERROR
    GATEWAY_LOG_FORMAT          text or json (one JSON object per line)
    GATEWAY_METRICS_LISTEN      host:port of the Prometheus /metrics listener (turns it on)
    GATEWAY_WORKERS             worker processes sharing the port: a number, or auto (one per core)

Secrets enter here and nowhere else: upstream keys are read from the variables that `api_key_env`
names, client tokens are kept only as sha256 digests, and every secret is registered with
`errors.register_secret` so that no error can carry it out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from server.config.checks import checked
from server.config.models import KIND_CAPABILITIES
from server.config.parse import parse
from server.config.readers import number, range_of, read_yaml, worker_count
from server.config.schema import ConfigError, GatewayConfig, MetricsConfig, ProviderConfig
from server.errors import register_secret
from server.routing.catalog import DEFAULT_CAPABILITIES, PROVIDER_PRESETS, ModelConfig

__all__ = ["default_config", "load_config"]

# Environment variables that override a number of the config: its field, and the smallest value it takes
# (a request cap of 0 bytes would refuse every call).
_ENV_NUMBERS = {"GATEWAY_GRACE_PERIOD_S": ("grace_period_s", 0), "GATEWAY_MAX_REQUEST_BYTES": ("max_request_bytes", 1)}


def default_config(
    env: Mapping[str, str] | None = None, *, listen: str | None = None, workers: str | None = None
) -> GatewayConfig:
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
    demo_capabilities = DEFAULT_CAPABILITIES | KIND_CAPABILITIES["demo"]  # as a configured demo model
    models = (ModelConfig(name="demo", provider="demo", upstream_model="demo", capabilities=demo_capabilities),)
    config = _apply_env(GatewayConfig(providers=tuple(providers), models=models), env)
    return checked(_apply_flags(config, listen, workers))


def load_config(
    path: Path | None, env: Mapping[str, str] | None = None, *, listen: str | None = None, workers: str | None = None
) -> GatewayConfig:
    """Load the YAML file at `path` (or the embedded default when None), then apply the environment and
    the `listen` and `workers` flags, which win over both."""
    env = os.environ if env is None else env
    if path is None:
        return default_config(env, listen=listen, workers=workers)
    raw = read_yaml(path)
    problems: list[str] = []
    unparsed: set[str] = set()
    config = parse(raw if raw is not None else {}, path.parent, env, problems, unparsed)
    try:
        config = _apply_env(config, env)
        config = checked(_apply_flags(config, listen, workers), unparsed=frozenset(unparsed))
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _apply_flags(config: GatewayConfig, listen: str | None, workers: str | None) -> GatewayConfig:
    """The command line's `--listen` and `--workers` over everything else."""
    if listen:
        config = replace(config, listen=listen)
    if workers is not None:
        problems: list[str] = []
        count = worker_count(workers, "--workers", problems)
        if count is None:
            raise ConfigError("\n".join(problems))
        config = replace(config, workers=count)
    return config


def _apply_env(config: GatewayConfig, env: Mapping[str, str]) -> GatewayConfig:
    problems: list[str] = []
    if env.get("GATEWAY_LISTEN"):
        config = replace(config, listen=env["GATEWAY_LISTEN"])
    if env.get("GATEWAY_LOG_LEVEL"):
        config = replace(config, log_level=env["GATEWAY_LOG_LEVEL"].upper())
    if env.get("GATEWAY_LOG_FORMAT"):
        config = replace(config, log_format=env["GATEWAY_LOG_FORMAT"].lower())
    if env.get("GATEWAY_METRICS_LISTEN"):
        config = replace(config, metrics=MetricsConfig(listen=env["GATEWAY_METRICS_LISTEN"]))
    if env.get("GATEWAY_WORKERS") and (workers := worker_count(env["GATEWAY_WORKERS"], "GATEWAY_WORKERS", problems)):
        config = replace(config, workers=workers)
    for var, (key, minimum) in _ENV_NUMBERS.items():
        if not env.get(var):
            continue
        current = getattr(config, key)
        maximum, whole = range_of(key, current)
        value = number(env[var], var, problems, minimum=minimum, maximum=maximum, whole=whole)
        if value is not None:
            config = replace(config, **{key: type(current)(value)})
    if problems:
        raise ConfigError("\n".join(problems))
    return config
