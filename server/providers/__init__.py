"""Provider adapters, one module per wire format, and the registry that builds them from config."""

from __future__ import annotations

from typing import assert_never

from server.config import ProviderConfig
from server.providers.anthropic import AnthropicProvider
from server.providers.base import Provider
from server.providers.demo import DemoProvider
from server.providers.gemini import GeminiProvider
from server.providers.openai import OpenAIProvider

__all__ = ["Provider", "build_provider"]


def build_provider(config: ProviderConfig) -> Provider:
    """The adapter of `config.kind`. The kinds are listed once, in `server.config.ProviderKind`; a kind
    added there without a case here fails mypy (assert_never)."""
    match config.kind:
        case "openai":
            return OpenAIProvider(config)
        case "anthropic":
            return AnthropicProvider(config)
        case "gemini":
            return GeminiProvider(config)
        case "demo":
            return DemoProvider(config.name)
        case _:
            assert_never(config.kind)
