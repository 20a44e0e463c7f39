"""Model routing: the name a client sends -> a catalog model -> the deployment that serves this call.

Names resolve in this order: a catalog model (the config's models, then the built-in models of the
configured preset providers, named "provider/upstream_model"); an alias (the config's, the models', then
the built-in short names such as "gpt-4.1"); "provider/anything" for any configured provider, passed
through as the upstream model name. Each call picks one deployment of the model by weight, and the final
event says who served it and what it cost.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import replace

from server.catalog import BUILTIN_ALIASES, BUILTIN_MODELS, Deployment, ModelConfig, builtin_price
from server.config import GatewayConfig
from server.errors import UpstreamError
from server.providers import Provider, build_provider
from server.types import ChatRequest, Completion, Finish, Served, StreamEvent, Usage

__all__ = ["Router"]


class Router:
    def __init__(
        self,
        models: Sequence[ModelConfig],
        providers: Mapping[str, Provider],
        aliases: Mapping[str, str] | None = None,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._providers = dict(providers)
        self._rng = rng
        self._models: dict[str, ModelConfig] = {}
        for model in models:
            self._models[model.name] = model
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

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Router:
        providers = {p.name: build_provider(p) for p in config.providers}
        return cls(config.models, providers, dict(config.aliases))

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    @property
    def known_names(self) -> list[str]:
        """Every name a client may send, aliases included (not the open-ended "provider/anything")."""
        return sorted({*self._models, *self._aliases})

    def aliases_of(self, model: str) -> list[str]:
        return sorted(alias for alias, target in self._aliases.items() if target == model)

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

    def pick(self, model: ModelConfig) -> Deployment:
        """One deployment of `model`, chosen by weight."""
        deployments = model.all_deployments
        if len(deployments) == 1:
            return deployments[0]
        point = self._rng() * sum(d.weight for d in deployments)
        for deployment in deployments:
            point -= deployment.weight
            if point < 0:
                return deployment
        return next(d for d in reversed(deployments) if d.weight > 0)

    def provider_of(self, deployment: Deployment) -> Provider:
        return self._providers[deployment.provider]

    async def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream `request` from one deployment of `model`: TextDelta*, then a Finish that names who served."""
        deployment = self.pick(model)
        provider = self._providers[deployment.provider]
        served = Served(model.name, provider.name, deployment.label)
        upstream = replace(request, model=deployment.upstream_model, max_output_tokens=model.max_tokens)
        try:
            async with aclosing(provider.stream(upstream)) as events:
                async for event in events:
                    if type(event) is Finish:
                        yield replace(event, served=served, cost_usd=_cost(model, deployment, event.usage))
                    else:
                        yield event
        except UpstreamError as error:
            _name_served(error, served)
            raise

    async def complete(self, model: ModelConfig, request: ChatRequest) -> Completion:
        deployment = self.pick(model)
        provider = self._providers[deployment.provider]
        served = Served(model.name, provider.name, deployment.label)
        upstream = replace(request, model=deployment.upstream_model, max_output_tokens=model.max_tokens)
        try:
            completion = await provider.complete(upstream)
        except UpstreamError as error:
            _name_served(error, served)
            raise
        return replace(completion, served=served, cost_usd=_cost(model, deployment, completion.usage))

    async def aclose(self) -> None:
        await asyncio.gather(*(provider.aclose() for provider in self._providers.values()))


def _cost(model: ModelConfig, deployment: Deployment, usage: Usage | None) -> float | None:
    price = model.price or builtin_price(deployment.upstream_model)
    if price is None or usage is None:
        return None
    return price.cost(usage)


def _name_served(error: UpstreamError, served: Served) -> None:
    error.metadata.setdefault("model", served.model)
    error.metadata.setdefault("deployment", served.deployment)
