"""The `models:` entries of the config file: deployments, aliases, prices, fallbacks and resume."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from server import defaults
from server.config.readers import as_list, mapping, number, unknown_keys
from server.resilience.retry import FailureClass
from server.routing.catalog import Deployment, ModelConfig, Price

__all__ = ["parse_model"]

_MODEL_KEYS = {
    *("name", "provider", "upstream_model", "max_tokens", "aliases", "deployments", "price", "fallbacks", "resume")
}
_FALLBACK_CLASSES = ("default", *(c.value for c in FailureClass if c is not FailureClass.FATAL))
_RESUME_MODES = ("none", "continue")


def parse_model(raw: Any, where: str, problems: list[str]) -> ModelConfig | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, _MODEL_KEYS, f"{where}.", problems)
    name, provider = str(entry.get("name") or ""), str(entry.get("provider") or "")
    has_deployments = entry.get("deployments") is not None
    if not name:
        problems.append(f"{where}.name: required")
    if has_deployments and provider:
        problems.append(f"{where}: give either provider (one deployment) or deployments, not both")
    elif not has_deployments and not provider:
        problems.append(f"{where}.provider: required")
    if not name or (not provider and not has_deployments):
        return None
    model = ModelConfig(name=name, provider=provider, upstream_model=str(entry.get("upstream_model") or name))
    if has_deployments:
        deployments = []
        for i, item in enumerate(as_list(entry["deployments"], f"{where}.deployments", problems)):
            deployment = _parse_deployment(item, f"{where}.deployments[{i}]", name, problems)
            if deployment is not None:
                deployments.append(deployment)
        if not deployments:
            problems.append(f"{where}.deployments: at least one deployment is required")
        model = replace(model, provider="", upstream_model="", deployments=tuple(deployments))
    if "max_tokens" in entry:
        cap = number(entry["max_tokens"], f"{where}.max_tokens", problems, minimum=1)
        if cap is not None:
            model = replace(model, max_tokens=min(int(cap), defaults.MAX_TOKENS_LIMIT))
    if entry.get("aliases") is not None:
        model = replace(model, aliases=tuple(str(a) for a in as_list(entry["aliases"], f"{where}.aliases", problems)))
    if entry.get("fallbacks") is not None:
        model = _parse_fallbacks(model, entry["fallbacks"], f"{where}.fallbacks", problems)
    if "resume" in entry:
        if entry["resume"] in _RESUME_MODES:
            model = replace(model, resume=entry["resume"])
        else:
            problems.append(f"{where}.resume: expected one of {', '.join(_RESUME_MODES)}, got {entry['resume']!r}")
    if entry.get("price") is not None:
        model = replace(model, price=_parse_price(entry["price"], f"{where}.price", problems))
    return model


def _parse_fallbacks(model: ModelConfig, raw: Any, where: str, problems: list[str]) -> ModelConfig:
    """A list (one chain for every failure), or a chain per failure class: default, rate_limited, unavailable."""
    if not isinstance(raw, dict):
        return replace(model, fallbacks=tuple(str(f) for f in as_list(raw, where, problems)))
    unknown_keys(raw, set(_FALLBACK_CLASSES), f"{where}.", problems)
    chains = {
        key: tuple(str(f) for f in as_list(raw[key], f"{where}.{key}", problems))
        for key in _FALLBACK_CLASSES
        if raw.get(key) is not None
    }
    by_class = tuple((key, chain) for key, chain in chains.items() if key != "default")
    return replace(model, fallbacks=chains.get("default", ()), fallbacks_by_class=by_class)


def _parse_deployment(raw: Any, where: str, model: str, problems: list[str]) -> Deployment | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, {"name", "provider", "upstream_model", "weight"}, f"{where}.", problems)
    provider = str(entry.get("provider") or "")
    if not provider:
        problems.append(f"{where}.provider: required")
        return None
    weight = number(entry.get("weight", 1), f"{where}.weight", problems, minimum=0)
    return Deployment(
        provider=provider,
        upstream_model=str(entry.get("upstream_model") or model),
        weight=weight if weight is not None else 1.0,
        name=str(entry.get("name") or ""),
    )


def _parse_price(raw: Any, where: str, problems: list[str]) -> Price | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, {"input", "output"}, f"{where}.", problems)
    numbers = [number(entry.get(k), f"{where}.{k}", problems, minimum=0) for k in ("input", "output")]
    if numbers[0] is None or numbers[1] is None:
        return None
    return Price(numbers[0], numbers[1])
