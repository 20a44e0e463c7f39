"""Provider adapters, one module per wire format, and the registry that builds them from config."""

from __future__ import annotations

from collections.abc import Callable

from server.config import ProviderConfig
from server.providers.anthropic import AnthropicProvider
from server.providers.base import Provider
from server.providers.demo import DemoProvider
from server.providers.gemini import GeminiProvider
from server.providers.openai import OpenAIProvider

__all__ = ["Provider", "build_provider"]

_BUILDERS: dict[str, Callable[[ProviderConfig], Provider]] = {
    "anthropic": AnthropicProvider,
    "demo": lambda config: DemoProvider(config.name),
    "gemini": GeminiProvider,
    "openai": OpenAIProvider,
}


def build_provider(config: ProviderConfig) -> Provider:
    return _BUILDERS[config.kind](config)
