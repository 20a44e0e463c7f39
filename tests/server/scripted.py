"""A provider that plays a script, and a fake clock, for unit tests of the router's attempt loop.

    provider = ScriptedProvider("a", {"m": [UpstreamUnavailable(...), Reply("hello world")]})

Each call to upstream model "m" plays the next step of its script (the last step repeats):
an UpstreamError raised before any event, a `Reply` (deltas, then a Finish), a `ToolReply` (tool-call
pieces, then a Finish with TOOL_CALLS), a `Cut` (some deltas or tool-call pieces, then an error), or a
`Stall` (deltas, then silence until cancelled). Every request it receives is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass

from server.errors import UpstreamError
from server.providers.base import Provider
from server.types import (
    ChatRequest,
    Completion,
    Finish,
    FinishReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)


@dataclass(frozen=True)
class Reply:
    text: str = "hello brave world"

    @property
    def words(self) -> list[str]:
        words = self.text.split(" ")
        return [words[0], *(f" {w}" for w in words[1:])]


@dataclass(frozen=True)
class ToolReply:
    pieces: tuple[ToolCallDelta, ...]


@dataclass(frozen=True)
class Cut:
    deltas: tuple[str | ToolCallDelta, ...]
    error: UpstreamError


@dataclass(frozen=True)
class Stall:
    deltas: tuple[str, ...] = ()


Step = UpstreamError | Reply | ToolReply | Cut | Stall
# provider name -> upstream model -> steps
Scripts = Mapping[str, Mapping[str, Sequence[Step]]]


class ScriptedProvider(Provider):
    def __init__(self, name: str, scripts: Mapping[str, Sequence[Step]]) -> None:
        super().__init__(name)
        self._scripts = {model: list(steps) for model, steps in scripts.items()}
        self.requests: list[ChatRequest] = []
        self.closed = 0  # streams whose generator was closed (finished, failed or cancelled)

    def calls(self, model: str) -> int:
        return sum(1 for r in self.requests if r.model == model)

    def _next(self, request: ChatRequest) -> Step:
        self.requests.append(request)
        script = self._scripts[request.model]
        step = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(step, Cut):
            return Cut(step.deltas, _fresh(step.error))
        return _fresh(step) if isinstance(step, UpstreamError) else step

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        step = self._next(request)
        try:
            await asyncio.sleep(0)
            if isinstance(step, UpstreamError):
                raise step
            if isinstance(step, Reply):
                for word in step.words:
                    yield TextDelta(word)
                n = len(step.words)
                yield Finish(FinishReason.STOP, Usage(3, n, 3 + n))
                return
            if isinstance(step, ToolReply):
                for piece in step.pieces:
                    yield piece
                yield Finish(FinishReason.TOOL_CALLS, Usage(3, len(step.pieces), 3 + len(step.pieces)))
                return
            for delta in step.deltas:
                yield TextDelta(delta) if isinstance(delta, str) else delta
            if isinstance(step, Cut):
                raise step.error
            await asyncio.Event().wait()  # a stall: silence until cancelled
        finally:
            self.closed += 1

    async def complete(self, request: ChatRequest) -> Completion:
        step = self._next(request)
        await asyncio.sleep(0)
        if isinstance(step, UpstreamError):
            raise step
        if isinstance(step, Cut):
            raise step.error
        if isinstance(step, Stall):
            await asyncio.Event().wait()
        if isinstance(step, ToolReply):
            calls = tuple(ToolCall(p.id, p.name, p.arguments) for p in step.pieces if p.id)
            return Completion("", FinishReason.TOOL_CALLS, Usage(3, 1, 4), tool_calls=calls)
        assert isinstance(step, Reply)
        n = len(step.words)
        return Completion(step.text, FinishReason.STOP, Usage(3, n, 3 + n))


def _fresh(error: UpstreamError) -> UpstreamError:
    """A copy of a scripted error, so that metadata one call adds never shows in another."""
    clone = type(error).__new__(type(error))
    clone.__dict__.update(error.__dict__)
    clone.args = error.args
    clone.metadata = dict(error.metadata)
    return clone


class FakeTime:
    """A clock that only moves when someone sleeps on it (sleeps return at once, and are recorded)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
