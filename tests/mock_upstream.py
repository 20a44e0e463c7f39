"""Helpers for provider tests that script an upstream's answer byte for byte (an in-memory transport).

The fakes in tests/fakes/ are the real servers; these scripted answers reach the corners a fake does
not produce (thinking blocks, tool calls, cache usage, odd error bodies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict

from server.config import ProviderConfig
from server.errors import UpstreamError
from server.providers.base import Provider
from server.providers.transport import Timeouts, Transport, UpstreamResponse
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


class ScriptedResponse(UpstreamResponse):
    """`body` in reads of `step` bytes."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, step: int) -> None:
        self.status = status
        self.headers = CIMultiDict(headers)
        self._reads = [body[i : i + step] for i in range(0, len(body), step)]

    async def __anext__(self) -> bytes:
        if not self._reads:
            raise StopAsyncIteration
        return self._reads.pop(0)

    async def read(self, limit: int | None = None) -> bytes:
        body = b""
        while self._reads and (limit is None or len(body) <= limit):
            body += self._reads.pop(0)
        return body

    async def aclose(self) -> None:
        self._reads.clear()


class ScriptedTransport(Transport):
    """Answers every POST with the same status, headers and body; remembers what was posted."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, *, step: int) -> None:
        self._answer = (status, dict(headers), body, step)
        self.posts: list[tuple[str, bytes]] = []
        self.headers: list[dict[str, str]] = []  # each POST's own headers

    async def post(
        self, path: str, body: bytes, timeouts: Timeouts, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        self.posts.append((path, body))
        self.headers.append(dict(headers or {}))
        return ScriptedResponse(*self._answer)


def scripted(
    provider: Callable[..., Provider],
    body: bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    split: bool = False,
) -> Provider:
    """`provider` (an adapter class) whose upstream answers every request with `body` (byte by byte if `split`)."""
    transport = ScriptedTransport(status, headers or {}, body, step=1 if split else max(len(body), 1))
    return provider(ProviderConfig(name="p", kind="openai", base_url="http://upstream.test"), transport=transport)


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
