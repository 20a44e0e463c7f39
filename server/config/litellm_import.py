"""Convert a LiteLLM proxy `config.yaml` into this gateway's config, and say what could not be carried over.

    python -m server.config.litellm_import litellm.yaml > gateway.yaml      # notes go to stderr

Carried over: `model_list` entries (`model_name`; `litellm_params.model` as `provider/name`, `api_base`,
`api_key: os.environ/NAME`, `timeout`, `weight`); entries sharing a `model_name` become weighted
deployments of one model; `router_settings.fallbacks` (and `litellm_settings.fallbacks`) become each
model's `fallbacks`; `router_settings.num_retries` (or `litellm_settings.num_retries`), the retries after
a call's first attempt, becomes `retry.max_attempts` = num_retries + 1. Not carried (each is named in the
notes): literal API keys (secrets come from the environment only), `rpm`/`tpm` limits, a deployment's own
`num_retries`, providers this gateway does not speak (azure, bedrock, vertex_ai …), and settings with no
counterpart here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from server.config.readers import read_yaml
from server.config.schema import ConfigError
from server.routing.catalog import PROVIDER_PRESETS

__all__ = ["Conversion", "convert"]

_ENV_PREFIX = "os.environ/"
# LiteLLM provider prefixes spoken natively or through an OpenAI-compatible API here.
_OPENAI_COMPATIBLE = {"openai", "hosted_vllm", "vllm", "openai_compatible", "ollama", "ollama_chat", "llamacpp"}
_NATIVE = {"anthropic": "anthropic", "gemini": "gemini", "deepseek": "openai"}


@dataclass
class Conversion:
    """The gateway config (a plain dict, ready for YAML) and what could not be carried over."""

    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Provider:
    name: str
    kind: str
    base_url: str
    api_key_env: str
    read_timeout_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind, "base_url": self.base_url}
        if self.api_key_env:
            entry["api_key_env"] = self.api_key_env
        if self.read_timeout_s is not None:
            entry["read_timeout_s"] = self.read_timeout_s
        return entry


def convert(litellm: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Conversion:
    """Convert a parsed LiteLLM config; `env` resolves `api_base: os.environ/NAME` (default: os.environ)."""
    env = os.environ if env is None else env
    notes: list[str] = []
    providers: dict[tuple[str, str, str], _Provider] = {}
    models: dict[str, list[dict[str, Any]]] = {}
    for i, entry in enumerate(litellm.get("model_list") or []):
        where = f"model_list[{i}]"
        if not isinstance(entry, Mapping) or not entry.get("model_name"):
            notes.append(f"{where}: skipped, no model_name")
            continue
        deployment = _deployment(entry, where, providers, env, notes)
        if deployment is not None:
            models.setdefault(str(entry["model_name"]), []).append(deployment)

    fallbacks = _fallbacks(litellm, set(models), notes)
    _note_unsupported_settings(litellm, notes)
    config: dict[str, Any] = {
        "listen": "127.0.0.1:50051",
        "providers": [p.as_dict() for p in providers.values()],
        "models": [_model(name, deployments, fallbacks.get(name)) for name, deployments in models.items()],
    }
    retries = _num_retries(litellm, notes)
    if retries is not None:
        config["retry"] = {"max_attempts": retries + 1}  # LiteLLM counts retries, the gateway attempts
    return Conversion(config, notes)


def _model(name: str, deployments: list[dict[str, Any]], fallbacks: list[str] | None) -> dict[str, Any]:
    """A `models:` entry: the provider shorthand for one deployment of weight 1, else its deployments."""
    model: dict[str, Any] = {"name": name}
    if len(deployments) == 1 and deployments[0].get("weight", 1) == 1:
        model["provider"] = deployments[0]["provider"]
        model["upstream_model"] = deployments[0]["upstream_model"]
    else:
        model["deployments"] = deployments
    if fallbacks:
        model["fallbacks"] = fallbacks
    return model


def _deployment(
    entry: Mapping[str, Any],
    where: str,
    providers: dict[tuple[str, str, str], _Provider],
    env: Mapping[str, str],
    notes: list[str],
) -> dict[str, Any] | None:
    params = entry.get("litellm_params") or {}
    prefix, upstream = _split_model(str(params.get("model") or ""))
    named = f"{where} ({entry['model_name']})"
    if not upstream:
        notes.append(f"{where}: skipped, litellm_params.model is missing")
        return None
    kind = _NATIVE.get(prefix) or ("openai" if prefix in _OPENAI_COMPATIBLE else None)
    if kind is None:
        notes.append(f"{named}: provider {prefix!r} is not supported here; entry skipped")
        return None
    upstream_of = _upstream_of(prefix, params, (where, named), env, notes)
    if upstream_of is None:
        return None
    base_url, key_env = upstream_of
    provider = _provider_for(prefix, kind, base_url, key_env, providers)
    if params.get("timeout") is not None:
        provider.read_timeout_s = max(provider.read_timeout_s or 0.0, float(params["timeout"]))
    _note_params(entry, params, named, notes)
    deployment: dict[str, Any] = {"provider": provider.name, "upstream_model": upstream}
    if params.get("weight") is not None:
        deployment["weight"] = float(params["weight"])
    return deployment


def _upstream_of(
    prefix: str, params: Mapping[str, Any], wheres: tuple[str, str], env: Mapping[str, str], notes: list[str]
) -> tuple[str, str] | None:
    """The base URL and key variable of a deployment (a preset's when it names none), or None to skip it.
    `wheres` is the entry's place, bare and with its model name."""
    where, named = wheres
    api_base = _api_base(params.get("api_base"), f"{where}.api_base", env, notes)
    if api_base == "":
        return None
    preset = PROVIDER_PRESETS.get(prefix)
    base_url = _base_url(prefix, api_base or (preset.base_url if preset else ""))
    if not base_url:
        notes.append(f"{named}: no api_base for provider {prefix!r}; entry skipped")
        return None
    key_env = _key_env(params.get("api_key"), f"{where}.api_key", notes)
    if key_env is None and preset is not None and api_base is None:
        key_env = preset.key_envs[0]
    return base_url, key_env or ""


def _split_model(litellm_model: str) -> tuple[str, str]:
    """`provider/name` as (provider, name); LiteLLM treats a bare name as an OpenAI model."""
    prefix, sep, upstream = litellm_model.partition("/")
    return (prefix, upstream) if sep else ("openai", litellm_model)


def _base_url(prefix: str, url: str) -> str:
    if url and prefix in {"ollama", "ollama_chat"} and not urlsplit(url).path.rstrip("/").endswith("/v1"):
        url = url.rstrip("/") + "/v1"  # Ollama's OpenAI-compatible API lives under /v1
    return url.rstrip("/")


def _note_params(entry: Mapping[str, Any], params: Mapping[str, Any], where: str, notes: list[str]) -> None:
    for limit in ("rpm", "tpm"):
        if params.get(limit) is not None or entry.get(limit) is not None:
            notes.append(f"{where}: {limit} limit not carried over (no rate limits yet)")
    if params.get("num_retries") is not None:
        notes.append(
            f"{where}: litellm_params.num_retries not carried over (retries are set for every model, by "
            "router_settings.num_retries here and retry.max_attempts in the gateway)"
        )
    for key in sorted(set(params) - {"model", "api_base", "api_key", "timeout", "weight", "rpm", "tpm", "num_retries"}):
        notes.append(f"{where}: litellm_params.{key} not carried over")


def _provider_for(
    prefix: str, kind: str, base_url: str, key_env: str, providers: dict[tuple[str, str, str], _Provider]
) -> _Provider:
    key = (kind, base_url, key_env)
    if key not in providers:
        taken = {p.name for p in providers.values()}
        preset = PROVIDER_PRESETS.get(prefix)
        # Only a preset's own address keeps the preset's name (and with it the built-in catalog models).
        name = prefix if preset and preset.base_url == base_url else f"{prefix}-{_host(base_url)}"
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}-{n}", n + 1
        providers[key] = _Provider(candidate, kind, base_url, key_env)
    return providers[key]


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "upstream").replace(".", "-")


def _api_base(value: object, where: str, env: Mapping[str, str], notes: list[str]) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not text.startswith(_ENV_PREFIX):
        return text
    var = text[len(_ENV_PREFIX) :]
    if env.get(var):
        notes.append(f"{where}: {text} was resolved now, to {env[var]}; the URL is written into the config")
        return env[var]
    notes.append(f"{where}: {text} is not set; entry skipped")
    return ""


def _key_env(value: object, where: str, notes: list[str]) -> str | None:
    if value is None:
        return None
    text = str(value)
    if text.startswith(_ENV_PREFIX):
        return text[len(_ENV_PREFIX) :]
    notes.append(f"{where}: a literal API key is not carried over; put it in an environment variable")
    return None


def _fallbacks(litellm: Mapping[str, Any], models: set[str], notes: list[str]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for section in ("router_settings", "litellm_settings"):
        settings = litellm.get(section) or {}
        for rule in settings.get("fallbacks") or []:
            if isinstance(rule, Mapping):
                for model, targets in rule.items():
                    _add_fallbacks(result, str(model), [str(t) for t in targets or []], models, section, notes)
        for key in ("context_window_fallbacks", "content_policy_fallbacks"):
            if settings.get(key):
                notes.append(f"{section}.{key}: not carried over (fallbacks here apply to any failure)")
    return result


def _add_fallbacks(
    result: dict[str, list[str]], model: str, targets: list[str], models: set[str], section: str, notes: list[str]
) -> None:
    """Add the converted models among `targets` to `model`'s chain (each once); name the others."""
    dropped = [t for t in targets if t not in models]
    if dropped:
        notes.append(f"{section}.fallbacks: {model} -> {', '.join(dropped)}: not a converted model")
    kept = [t for t in dict.fromkeys(targets) if t in models]
    if model in models and kept:
        chain = result.setdefault(model, [])
        chain.extend(t for t in kept if t not in chain)


def _num_retries(litellm: Mapping[str, Any], notes: list[str]) -> int | None:
    """LiteLLM's retries after the first attempt of a call: `router_settings.num_retries`, else
    `litellm_settings.num_retries` (the Router's precedence), else None (LiteLLM's default, 2 retries, is
    the gateway's default of 3 attempts)."""
    chosen: tuple[str, int] | None = None
    for section in ("router_settings", "litellm_settings"):
        value = (litellm.get(section) or {}).get("num_retries")
        where = f"{section}.num_retries"
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            notes.append(f"{where}: expected a whole number of retries, got {value!r}")
        elif chosen is not None:
            notes.append(f"{where}: {value} is overridden by {chosen[0]} ({chosen[1]}), as in LiteLLM")
        else:
            chosen = (where, value)
    return chosen[1] if chosen else None


def _note_unsupported_settings(litellm: Mapping[str, Any], notes: list[str]) -> None:
    router = litellm.get("router_settings") or {}
    for key in sorted(
        set(router) - {"fallbacks", "context_window_fallbacks", "content_policy_fallbacks", "num_retries"}
    ):
        notes.append(f"router_settings.{key}: not carried over")
    general = litellm.get("general_settings") or {}
    if general.get("master_key"):
        notes.append("general_settings.master_key: not carried over; configure auth.tokens (sha256 or env)")
    for key in sorted(set(general) - {"master_key"}):
        notes.append(f"general_settings.{key}: not carried over")
    for key in sorted(set(litellm.get("litellm_settings") or {}) - {"fallbacks", "num_retries"}):
        if key not in {"context_window_fallbacks", "content_policy_fallbacks"}:
            notes.append(f"litellm_settings.{key}: not carried over")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.config.litellm_import", description=__doc__.splitlines()[0])
    parser.add_argument("litellm_config", type=Path, help="LiteLLM proxy config.yaml")
    parser.add_argument("-o", "--output", type=Path, help="write the gateway config here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        raw = read_yaml(args.litellm_config, "LiteLLM config")
    except ConfigError as exc:
        print(f"litellm_import: {exc}", file=sys.stderr)
        return 2
    if not isinstance(raw, Mapping):
        print(f"litellm_import: {args.litellm_config} is not a LiteLLM config (no mapping)", file=sys.stderr)
        return 2
    conversion = convert(raw)
    text = yaml.safe_dump(conversion.config, sort_keys=False)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    for note in conversion.notes:
        print(f"not carried over: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
