"""Provider adapters, one module per wire format, and the registry that builds them from config."""

from __future__ import annotations

from collections.abc import Callable

from server.config import ProviderConfig
from server.providers.base import Provider
from server.providers.demo import DemoProvider
from server.providers.openai import OpenAIProvider

__all__ = ["Provider", "build_provider"]

_BUILDERS: dict[str, Callable[[ProviderConfig], Provider]] = {
    "demo": lambda config: DemoProvider(config.name),
    "openai": OpenAIProvider,
}


def build_provider(config: ProviderConfig) -> Provider:
    return _BUILDERS[config.kind](config)
