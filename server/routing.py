"""Model routing: the catalog name a client sends -> the provider and upstream model that serve it.

Today each catalog name maps to one deployment. Aliases, weighted deployments, fallbacks and circuit
breakers extend `Router.resolve` and `Route` without changing the servicer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from server.config import GatewayConfig, ModelConfig
from server.providers import Provider, build_provider

__all__ = ["Route", "Router"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one catalog model is served."""

    model: ModelConfig
    provider: Provider


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = {route.model.name: route for route in routes}
        self._providers = list({id(r.provider): r.provider for r in routes}.values())

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Router:
        providers = {p.name: build_provider(p) for p in config.providers}
        return cls([Route(model, providers[model.provider]) for model in config.models])

    @property
    def model_names(self) -> list[str]:
        return sorted(self._routes)

    def resolve(self, model: str) -> Route | None:
        return self._routes.get(model)

    async def aclose(self) -> None:
        await asyncio.gather(*(provider.aclose() for provider in self._providers))
