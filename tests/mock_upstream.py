"""Helpers for provider tests that script an upstream's answer byte for byte (httpx.MockTransport).

The fakes in tests/fakes/ are the real servers; these scripted answers reach the corners a fake does
not produce (thinking blocks, tool calls, cache usage, odd error bodies).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import httpx

from server.config import ProviderConfig
from server.errors import UpstreamError
from server.providers.base import Provider
from server.types import ChatMessage, ChatRequest, Finish, Role, SamplingParams, StreamEvent, TextDelta


@dataclass
class Outcome:
    """Everything one provider stream produced."""

    events: list[StreamEvent] = field(default_factory=list)
    error: UpstreamError | None = None

    @property
    def text(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TextDelta)]

    @property
    def finish(self) -> Finish:
        assert self.events, f"no events; error {self.error!r}"
        last = self.events[-1]
        assert isinstance(last, Finish), f"ended with {last!r}; error {self.error!r}"
        return last


def scripted(
    provider: Callable[..., Provider],
    body: bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    split: bool = False,
) -> Provider:
    """`provider` (an adapter class) whose upstream answers every request with `body` (byte by byte if `split`)."""

    async def reads() -> AsyncIterator[bytes]:
        # An async iterator, not bytes: httpx would read bytes content at once, and then refuse to stream it.
        step = 1 if split else max(len(body), 1)
        for i in range(0, len(body), step):
            yield body[i : i + step]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=reads())

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://upstream.test")
    return provider(ProviderConfig(name="p", kind="openai", base_url="http://upstream.test"), client=client)


def chat(*messages: tuple[Role, str], **params: object) -> ChatRequest:
    return ChatRequest(
        "model-x",
        tuple(ChatMessage(role, text) for role, text in messages) or (ChatMessage(Role.USER, "hi"),),
        SamplingParams(**params),  # type: ignore[arg-type]
        max_output_tokens=1000,
    )


async def collect(provider: Provider, request: ChatRequest | None = None) -> Outcome:
    outcome = Outcome()
    try:
        async for event in provider.stream(request or chat()):
            outcome.events.append(event)
    except UpstreamError as error:
        outcome.error = error
    finally:
        await provider.aclose()
    return outcome


def sse(events: Iterable[str], *, line_end: str = "\n") -> bytes:
    """Event blocks (their lines joined by "\\n") as an event-stream body with the given line ends."""
    return "".join(block.replace("\n", line_end) + line_end * 2 for block in events).encode()
