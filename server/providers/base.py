"""The interface every provider adapter implements. Adapters know HTTP and their wire format, not gRPC."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator

from server.embedding import EmbedRequest, EmbedResult, TokenCount, estimate_chat_tokens
from server.errors import CapabilityUnsupported
from server.types import ChatRequest, Completion, StreamEvent

__all__ = ["Provider"]


class Provider(abc.ABC):
    """One upstream API account. `name` is the provider's name in the gateway config."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Yield TextDelta events, then exactly one Finish; raise an UpstreamError on any failure.

        Implementations are async generators that close their upstream response in `finally`, so that
        closing the generator (a cancelled or disconnected client) closes the upstream request.
        """

    @abc.abstractmethod
    async def complete(self, request: ChatRequest) -> Completion:
        """Return the whole reply from a non-streaming upstream call."""

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """One vector per text, in order. Only providers with an embeddings endpoint override this; the
        catalog keeps calls from the others (a model without "embeddings" never gets here)."""
        raise CapabilityUnsupported(request.model, "embeddings")

    async def count_tokens(self, request: ChatRequest) -> TokenCount:
        """The input tokens of `request`: the provider's count where it has an endpoint for it (Anthropic,
        Gemini override this), else the gateway's estimate, marked as one."""
        return TokenCount(estimate_chat_tokens(request), exact=False)

    async def aclose(self) -> None:  # noqa: B027  (optional hook: most providers hold nothing)
        """Release pooled connections. The default has nothing to release."""
