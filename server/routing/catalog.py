"""The model catalog: what clients may name, where each model is served, and what it costs.

A catalog model has one or more deployments (a provider and the upstream model name), each with a weight;
aliases that resolve to it; a price in USD per million tokens; an output-token cap; and fallbacks. The
built-in tables below describe the common providers and models; a config file adds to or overrides them.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from server import defaults
from server.types import Usage

__all__ = [
    "BUILTIN_ALIASES",
    "BUILTIN_MODELS",
    "CAPABILITIES",
    "CHAT",
    "DEFAULT_CAPABILITIES",
    "PROVIDER_PRESETS",
    "Catalog",
    "Deployment",
    "ModelConfig",
    "Price",
    "ProviderPreset",
    "Shadow",
    "builtin_price",
    "cost_of",
]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. Prompt tokens read from the provider's cache cost `cache_read_per_million`,
    those written to it `cache_write_per_million` (5-minute TTL) or `cache_write_1h_per_million` (1-hour
    TTL); None means the input price (no discount known), and for the 1-hour price the 5-minute one."""

    input_per_million: float
    output_per_million: float
    cache_read_per_million: float | None = None
    cache_write_per_million: float | None = None
    cache_write_1h_per_million: float | None = None

    def cost(self, usage: Usage) -> float:
        cached, written = usage.cached_prompt_tokens, usage.cache_write_tokens
        if not (cached or written):
            return (
                usage.prompt_tokens * self.input_per_million + usage.completion_tokens * self.output_per_million
            ) / 1_000_000
        read_price = self.input_per_million if self.cache_read_per_million is None else self.cache_read_per_million
        write_price = self.input_per_million if self.cache_write_per_million is None else self.cache_write_per_million
        hour_price = write_price if self.cache_write_1h_per_million is None else self.cache_write_1h_per_million
        hour = min(usage.cache_write_1h_tokens, written)
        uncached = max(usage.prompt_tokens - cached - written, 0)
        return (
            uncached * self.input_per_million
            + cached * read_price
            + (written - hour) * write_price
            + hour * hour_price
            + usage.completion_tokens * self.output_per_million
        ) / 1_000_000


# What a model can do, as ListModels and CAPABILITY_UNSUPPORTED name it.
CAPABILITIES = ("embeddings", "json_object", "json_schema", "prompt_caching", "reasoning", "tools", "vision")
# Generating (Generate, StreamGenerate, InteractiveStream, CountTokens) needs "chat", which is never
# configured or listed: every model has it except an embedding model, whose only capability is
# "embeddings" (so a configured model's `capabilities: [embeddings]` makes it one).
CHAT = "chat"
EMBEDDING_ONLY = frozenset({"embeddings"})
_IMPLICIT = frozenset({CHAT})
# Every provider kind maps tools and both JSON formats (Anthropic through a forced tool), so a model has
# them unless its config or the built-in table says otherwise. Prompt caching depends on the upstream
# (a compatible server may cache nothing), so a configured model has it only when its config says so;
# the built-in models of the big providers have it.
DEFAULT_CAPABILITIES = frozenset({"json_object", "json_schema", "tools"})


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a model is served. `name` is what responses report ("openai/gpt-4.1" by default).
    `capabilities` None means the model's."""

    provider: str
    upstream_model: str
    weight: float = 1.0
    name: str = ""
    capabilities: frozenset[str] | None = None

    @property
    def label(self) -> str:
        return self.name or f"{self.provider}/{self.upstream_model}"


@dataclass(frozen=True, slots=True)
class Shadow:
    """Shadow traffic of a model: `percent` of its calls go also, in the background, to a catalog `model` or
    to a `deployment` (a deployment's name, or "provider/upstream_model"); at most `max_concurrent` at once.
    The shadow's answer is only measured (server/observe/shadow.py), never sent to the caller."""

    model: str = ""
    deployment: str = ""
    percent: float = 0.0
    max_concurrent: int = defaults.SHADOW_MAX_CONCURRENT


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A catalog model. `provider` and `upstream_model` are the shorthand for a single deployment."""

    name: str
    provider: str = ""
    upstream_model: str = ""
    # The cap on config.max_tokens, and what providers that require max_tokens (Anthropic) send by default.
    max_tokens: int = defaults.MAX_TOKENS_LIMIT
    aliases: tuple[str, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    price: Price | None = None
    # Models tried in order when this one cannot serve a call; `fallbacks_by_class` replaces the chain for
    # one failure class ("rate_limited" or "unavailable").
    fallbacks: tuple[str, ...] = ()
    fallbacks_by_class: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # "continue": a stream that fails after its first token is resumed instead of ended (see resilience/resume.py).
    resume: str = "none"
    capabilities: frozenset[str] = DEFAULT_CAPABILITIES

    def serves(self, deployment: Deployment, needs: frozenset[str]) -> bool:
        """Whether `deployment` (one of this model's) has every capability in `needs`."""
        caps = self.capabilities if deployment.capabilities is None else deployment.capabilities
        if CHAT in needs and caps == EMBEDDING_ONLY:
            return False
        return needs - _IMPLICIT <= caps

    def lacks(self, needs: frozenset[str]) -> str | None:
        """The first capability of `needs` that no deployment of this model has, or None."""
        for capability in sorted(needs):
            if not any(self.serves(d, frozenset((capability,))) for d in self.all_deployments):
                return capability
        if needs and not any(self.serves(d, needs) for d in self.all_deployments):
            return sorted(needs)[0]  # each is served somewhere, but no deployment has them all
        return None

    def all_capabilities(self) -> frozenset[str]:
        """What at least one deployment can do."""
        caps: set[str] = set()
        for d in self.all_deployments:
            caps |= self.capabilities if d.capabilities is None else d.capabilities
        return frozenset(caps)

    # Shadow traffic (off: None): a share of the calls also goes to a second target, whose answer is discarded.
    shadow: Shadow | None = None

    @property
    def all_deployments(self) -> tuple[Deployment, ...]:
        if self.deployments:
            return self.deployments
        return (Deployment(self.provider, self.upstream_model or self.name),)

    def fallbacks_for(self, failure_class: str) -> tuple[str, ...]:
        """The fallback chain after a failure of `failure_class`."""
        return dict(self.fallbacks_by_class).get(failure_class, self.fallbacks)

    @property
    def all_fallbacks(self) -> tuple[str, ...]:
        """Every model any chain may fall back to, each once, in order of first mention."""
        chains = (self.fallbacks, *(chain for _, chain in self.fallbacks_by_class))
        return tuple(dict.fromkeys(name for chain in chains for name in chain))


@dataclass(frozen=True, slots=True)
class ProviderPreset:
    """A well-known upstream: its wire protocol, address and key variables."""

    kind: str
    base_url: str
    key_envs: tuple[str, ...]


# Enabled without a config file when one of their key variables is set.
PROVIDER_PRESETS: dict[str, ProviderPreset] = {
    "openai": ProviderPreset("openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",)),
    "anthropic": ProviderPreset("anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",)),
    "gemini": ProviderPreset(
        "gemini", "https://generativelanguage.googleapis.com", ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    ),
    "deepseek": ProviderPreset("openai", "https://api.deepseek.com/v1", ("DEEPSEEK_API_KEY",)),
    "holysheep": ProviderPreset("openai", "https://api.holysheep.ai/v1", ("HOLYSHEEP_API_KEY",)),
}

# Models of the presets: (provider, upstream model, catalog aliases, price or None, max output tokens).
# Prices are USD per million tokens (input, output); cache prices follow from _CACHE_FACTORS. Capabilities
# are DEFAULT_CAPABILITIES and prompt_caching unless _BUILTIN_CAPABILITIES says less.
_MODEL_TABLE: tuple[tuple[str, str, tuple[str, ...], tuple[float, float] | None, int], ...] = (
    ("openai", "gpt-4.1", ("gpt-4.1",), (8.0, 32.0), 32_768),
    ("openai", "gpt-4.1-mini", ("gpt-4.1-mini",), (0.40, 1.60), 32_768),
    ("openai", "gpt-4o", ("gpt-4o",), (2.50, 10.0), 16_384),
    ("openai", "gpt-4o-mini", ("gpt-4o-mini",), (0.15, 0.60), 16_384),
    ("anthropic", "claude-sonnet-4-5", ("claude-sonnet-4.5",), (15.0, 75.0), 64_000),
    ("anthropic", "claude-haiku-4-5", ("claude-haiku-4.5",), (1.0, 5.0), 64_000),
    ("gemini", "gemini-2.5-flash", ("gemini-2.5-flash",), (2.50, 10.0), 65_536),
    ("gemini", "gemini-2.5-pro", ("gemini-2.5-pro",), (1.25, 10.0), 65_536),
    ("deepseek", "deepseek-chat", ("deepseek-v3.2",), (0.42, 1.90), 8_192),
    ("deepseek", "deepseek-reasoner", ("deepseek-r1",), (0.42, 1.90), 32_768),
    ("holysheep", "gpt-4.1", (), (8.0, 32.0), 32_768),
    ("holysheep", "claude-sonnet-4-5", (), (15.0, 75.0), 64_000),
    ("holysheep", "gemini-2.5-flash", (), (2.50, 10.0), 65_536),
    ("holysheep", "deepseek-v3.2", (), (0.42, 1.90), 8_192),
    # Embedding models: the price is per million input tokens (output 0); max_tokens does not apply.
    ("openai", "text-embedding-3-small", ("text-embedding-3-small",), (0.02, 0.0), 0),
    ("openai", "text-embedding-3-large", ("text-embedding-3-large",), (0.13, 0.0), 0),
    ("gemini", "gemini-embedding-001", ("gemini-embedding-001",), (0.15, 0.0), 0),
    ("gemini", "text-embedding-004", ("text-embedding-004",), None, 0),
)

# DeepSeek's chat models take tools and JSON mode but no JSON Schema (nor images); its reasoner no tools.
# Every model of the table caches prompts: Anthropic at the breakpoints the client marks, the others by
# themselves; every other model of the table takes images.
_BUILTIN_CAPABILITIES: dict[str, frozenset[str]] = {
    "deepseek-chat": frozenset({"tools", "json_object", "prompt_caching"}),
    "deepseek-v3.2": frozenset({"tools", "json_object", "prompt_caching"}),
    "deepseek-reasoner": frozenset({"json_object", "prompt_caching"}),
    "text-embedding-3-small": EMBEDDING_ONLY,
    "text-embedding-3-large": EMBEDDING_ONLY,
    "gemini-embedding-001": EMBEDDING_ONLY,
    "text-embedding-004": EMBEDDING_ONLY,
}
_TABLE_CAPABILITIES = DEFAULT_CAPABILITIES | {"prompt_caching", "vision"}
# The reasoning models of the table (extended thinking, thinkingConfig); OpenAI's GPT-4.1 and GPT-4o take no
# reasoning_effort, and DeepSeek's reasoner always reasons and takes no setting.
_REASONING_MODELS = frozenset({"claude-sonnet-4-5", "claude-haiku-4-5", "gemini-2.5-flash", "gemini-2.5-pro"})

_EMBEDDING_MODELS = frozenset(u for u, caps in _BUILTIN_CAPABILITIES.items() if caps == EMBEDDING_ONLY)

# Cache prices as multiples of the input price (read, write with a 5-minute TTL, write with a 1-hour TTL),
# from each provider's pricing page: Anthropic reads at 0.1x and writes at 1.25x (5 minutes) or 2x (1 hour);
# OpenAI's cached input is 0.25x for the GPT-4.1 family
# and 0.5x for GPT-4o; Gemini 2.5's implicit cache reads at 0.25x (no write charge); DeepSeek's cache hits
# at 0.1x. A provider that charges nothing extra to write bills written tokens at the input price.
_CACHE_FACTORS: dict[str, tuple[float, float, float]] = {
    "anthropic": (0.1, 1.25, 2.0),
    "gpt-4.1": (0.25, 1.0, 1.0),
    "gpt-4.1-mini": (0.25, 1.0, 1.0),
    "gpt-4o": (0.5, 1.0, 1.0),
    "gpt-4o-mini": (0.5, 1.0, 1.0),
    "gemini": (0.25, 1.0, 1.0),
    "deepseek": (0.1, 1.0, 1.0),
}


def _table_price(upstream: str, price: tuple[float, float]) -> Price:
    if upstream in _EMBEDDING_MODELS:
        return Price(price[0], price[1])  # no prompt cache
    family = upstream if upstream in _CACHE_FACTORS else upstream.split("-")[0]
    family = {"claude": "anthropic"}.get(family, family)
    read, write, hour = _CACHE_FACTORS.get(family, (1.0, 1.0, 1.0))
    return Price(price[0], price[1], *(round(price[0] * factor, 6) for factor in (read, write, hour)))


# Catalog models of every preset, named "provider/upstream_model".
BUILTIN_MODELS: dict[str, ModelConfig] = {
    f"{provider}/{upstream}": ModelConfig(
        name=f"{provider}/{upstream}",
        provider=provider,
        upstream_model=upstream,
        max_tokens=min(max_out, defaults.MAX_TOKENS_LIMIT),
        price=_table_price(upstream, price) if price else None,
        # holysheep relays every model over the OpenAI wire, which has no cache breakpoints.
        capabilities=_BUILTIN_CAPABILITIES.get(upstream, _TABLE_CAPABILITIES)
        - ({"prompt_caching"} if provider == "holysheep" or upstream in _EMBEDDING_MODELS else set())
        | ({"reasoning"} if upstream in _REASONING_MODELS and provider != "holysheep" else set()),
    )
    for provider, upstream, _aliases, price, max_out in _MODEL_TABLE
}
# The common short names, each for its first provider in the table.
BUILTIN_ALIASES: dict[str, str] = {}
for _provider, _upstream, _aliases, _price, _max in _MODEL_TABLE:
    for _alias in _aliases:
        BUILTIN_ALIASES.setdefault(_alias, f"{_provider}/{_upstream}")

_PRICE_BY_UPSTREAM = {
    upstream: _table_price(upstream, price)
    for _provider, upstream, _aliases, price, _max in _MODEL_TABLE
    if price is not None
}


def builtin_price(upstream_model: str) -> Price | None:
    """The built-in price of an upstream model name, whichever provider serves it."""
    return _PRICE_BY_UPSTREAM.get(upstream_model)


def cost_of(model: ModelConfig, deployment: Deployment, usage: Usage | None) -> float | None:
    """What `usage` on `deployment` of `model` cost in USD: the model's price, else the built-in price of the
    upstream model; None when neither is known or the usage is."""
    price = model.price or builtin_price(deployment.upstream_model)
    if price is None or usage is None:
        return None
    return price.cost(usage)


class Catalog:
    """What a name means: the configured models, the built-in models of the configured providers, the
    aliases, and "provider/anything" passed through to any configured provider. Fixed once built.

    Names resolve in this order: a catalog model (the config's models, then the built-in models of the
    configured preset providers, named "provider/upstream_model"); an alias (the config's, the models',
    then the built-in short names such as "gpt-4.1"); "provider/anything" for a configured provider.
    """

    def __init__(
        self,
        models: Sequence[ModelConfig],
        providers: Collection[str],
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self._providers = frozenset(providers)
        self._models: dict[str, ModelConfig] = {model.name: model for model in models}
        for name, builtin in BUILTIN_MODELS.items():  # after the config's: a config model of that name wins
            if builtin.provider in self._providers and name not in self._models:
                self._models[name] = builtin
        self._aliases: dict[str, str] = {}
        for alias, target in BUILTIN_ALIASES.items():
            if target in self._models and alias not in self._models:
                self._aliases[alias] = target
        for model in models:
            self._aliases.update(dict.fromkeys(model.aliases, model.name))
        self._aliases.update(aliases or {})

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    @functools.cached_property
    def known_names(self) -> tuple[str, ...]:
        """Every name a client may send, aliases included (not the open-ended "provider/anything"),
        sorted once: the catalog does not change."""
        return tuple(sorted({*self._models, *self._aliases}))

    def aliases_of(self, model: str) -> list[str]:
        return sorted(alias for alias, target in self._aliases.items() if target == model)

    def models(self) -> list[ModelConfig]:
        """Every catalog model, by name."""
        return [self._models[name] for name in self.model_names]

    def resolve(self, name: str) -> ModelConfig | None:
        model = self._models.get(name)
        if model is not None:
            return model
        target = self._aliases.get(name)
        if target is not None:
            return self._models.get(target) or self._passthrough(target)
        return self._passthrough(name)

    def _passthrough(self, name: str) -> ModelConfig | None:
        provider, sep, upstream = name.partition("/")
        if not sep or not upstream or provider not in self._providers:
            return None
        return ModelConfig(name=name, provider=provider, upstream_model=upstream)
