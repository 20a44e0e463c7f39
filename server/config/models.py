"""The `models:` entries of the config file: deployments, aliases, prices, fallbacks, resume and capabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from server import defaults
from server.config.readers import MAX_WHOLE, as_list, mapping, number, unknown_keys
from server.resilience.retry import FailureClass
from server.routing.catalog import CAPABILITIES, Deployment, ModelConfig, Price, Shadow

__all__ = ["KIND_CAPABILITIES", "parse_model"]

_MODEL_KEYS = {
    *("name", "provider", "upstream_model", "max_tokens", "aliases", "deployments", "price", "fallbacks", "resume"),
    *("capabilities", "shadow"),
}
_FALLBACK_CLASSES = ("default", *(c.value for c in FailureClass if c is not FailureClass.FATAL))
_RESUME_MODES = ("none", "continue")


# What every model of a provider kind can do beyond DEFAULT_CAPABILITIES, unless its `capabilities` say
# otherwise: every Claude and Gemini model takes images, Anthropic caches at the client's breakpoints (an
# OpenAI-compatible server may do neither); the demo does all of it, reasons, and embeds.
KIND_CAPABILITIES: dict[str, frozenset[str]] = {
    "anthropic": frozenset({"prompt_caching", "vision"}),
    "gemini": frozenset({"vision"}),
    "demo": frozenset({"embeddings", "prompt_caching", "reasoning", "vision"}),
}


def parse_model(
    raw: Any, where: str, problems: list[str], kinds: Mapping[str, str] | None = None
) -> ModelConfig | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, _MODEL_KEYS, f"{where}.", problems)
    model = _model_with_deployments(entry, where, problems)
    if model is None:
        return None
    if "max_tokens" in entry:
        cap = number(entry["max_tokens"], f"{where}.max_tokens", problems, minimum=1, maximum=MAX_WHOLE, whole=True)
        if cap is not None:
            model = replace(model, max_tokens=min(int(cap), defaults.MAX_TOKENS_LIMIT))
    if entry.get("aliases") is not None:
        model = replace(model, aliases=tuple(str(a) for a in as_list(entry["aliases"], f"{where}.aliases", problems)))
    if entry.get("fallbacks") is not None:
        model = _parse_fallbacks(model, entry["fallbacks"], f"{where}.fallbacks", problems)
    if "resume" in entry:
        model = _parse_resume(model, entry["resume"], f"{where}.resume", problems)
    if entry.get("price") is not None:
        model = replace(model, price=_parse_price(entry["price"], f"{where}.price", problems))
    if entry.get("capabilities") is not None:
        capabilities = parse_capabilities(entry["capabilities"], f"{where}.capabilities", problems)
        model = replace(model, capabilities=capabilities)
        problems += _embedding_problems(model, kinds or {}, where)
    elif kinds:
        extra = [KIND_CAPABILITIES.get(kinds.get(d.provider) or "", frozenset()) for d in model.all_deployments]
        model = replace(model, capabilities=model.capabilities | frozenset.intersection(*extra))
    if entry.get("shadow") is not None:
        model = replace(model, shadow=_parse_shadow(entry["shadow"], f"{where}.shadow", problems))
    return model


def _embedding_problems(model: ModelConfig, kinds: Mapping[str, str], where: str) -> list[str]:
    """Anthropic has no embeddings endpoint: a model served there cannot say it embeds."""
    return [
        f"{where}.capabilities: provider {d.provider!r} (anthropic) has no embeddings endpoint"
        for d in model.all_deployments
        if kinds.get(d.provider) == "anthropic" and model.serves(d, frozenset({"embeddings"}))
    ]


def parse_capabilities(raw: Any, where: str, problems: list[str]) -> frozenset[str]:
    """A list of capability names, each one the gateway knows."""
    names = [str(c) for c in as_list(raw, where, problems)]
    for name in names:
        if name not in CAPABILITIES:
            problems.append(f"{where}: unknown capability {name!r}; known: {', '.join(CAPABILITIES)}")
    return frozenset(n for n in names if n in CAPABILITIES)


def _model_with_deployments(entry: dict[str, Any], where: str, problems: list[str]) -> ModelConfig | None:
    """The model's name and where it is served: `provider` (one deployment) or a list of `deployments`."""
    name, provider = str(entry.get("name") or ""), str(entry.get("provider") or "")
    has_deployments = entry.get("deployments") is not None
    problems += _identity_problems(name, provider, has_deployments, where)
    if not name or not (provider or has_deployments):
        return None
    if has_deployments:
        return ModelConfig(name=name, deployments=_parse_deployments(entry["deployments"], where, name, problems))
    return ModelConfig(name=name, provider=provider, upstream_model=str(entry.get("upstream_model") or name))


def _identity_problems(name: str, provider: str, has_deployments: bool, where: str) -> list[str]:
    problems = [] if name else [f"{where}.name: required"]
    if has_deployments and provider:
        problems.append(f"{where}: give either provider (one deployment) or deployments, not both")
    elif not has_deployments and not provider:
        problems.append(f"{where}.provider: required")
    return problems


def _parse_deployments(raw: Any, where: str, model: str, problems: list[str]) -> tuple[Deployment, ...]:
    items = as_list(raw, f"{where}.deployments", problems)
    parsed = [_parse_deployment(item, f"{where}.deployments[{i}]", model, problems) for i, item in enumerate(items)]
    deployments = tuple(d for d in parsed if d is not None)
    if not deployments:
        problems.append(f"{where}.deployments: at least one deployment is required")
    return deployments


def _parse_resume(model: ModelConfig, raw: Any, where: str, problems: list[str]) -> ModelConfig:
    if raw in _RESUME_MODES:
        return replace(model, resume=raw)
    problems.append(f"{where}: expected one of {', '.join(_RESUME_MODES)}, got {raw!r}")
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
    unknown_keys(entry, {"name", "provider", "upstream_model", "weight", "capabilities"}, f"{where}.", problems)
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
        capabilities=(
            parse_capabilities(entry["capabilities"], f"{where}.capabilities", problems)
            if entry.get("capabilities") is not None
            else None
        ),
    )


def _parse_price(raw: Any, where: str, problems: list[str]) -> Price | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, {"input", "output", *_CACHE_PRICES}, f"{where}.", problems)
    numbers = [number(entry.get(k), f"{where}.{k}", problems, minimum=0) for k in ("input", "output")]
    # Optional: USD per million prompt tokens read from / written to the provider's cache (default: input;
    # a 1-hour write's default is the 5-minute write's).
    cache = [
        number(entry[k], f"{where}.{k}", problems, minimum=0) if entry.get(k) is not None else None
        for k in _CACHE_PRICES
    ]
    if numbers[0] is None or numbers[1] is None:
        return None
    return Price(numbers[0], numbers[1], *cache)


_CACHE_PRICES = ("cache_read", "cache_write", "cache_write_1h")


def _parse_shadow(raw: Any, where: str, problems: list[str]) -> Shadow | None:
    """`{model: NAME | deployment: NAME, percent: P, max_concurrent: N}`: exactly one target, 0 <= P <= 100."""
    entry = mapping(raw, where, problems)
    unknown_keys(entry, {"model", "deployment", "percent", "max_concurrent"}, f"{where}.", problems)
    model, deployment = str(entry.get("model") or ""), str(entry.get("deployment") or "")
    if bool(model) == bool(deployment):
        problems.append(f"{where}: give either model or deployment (the shadow's target), not both")
        return None
    if "percent" not in entry:
        problems.append(f"{where}.percent: required (the share of calls shadowed, 0 to 100)")
        return None
    percent = number(entry["percent"], f"{where}.percent", problems, minimum=0)
    if percent is not None and percent > 100:
        problems.append(f"{where}.percent: must be at most 100")
        return None
    cap = number(
        entry.get("max_concurrent", defaults.SHADOW_MAX_CONCURRENT), f"{where}.max_concurrent", problems, minimum=1
    )
    if percent is None or cap is None:
        return None
    return Shadow(model=model, deployment=deployment, percent=percent, max_concurrent=int(cap))
