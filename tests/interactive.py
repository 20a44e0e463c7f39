"""Helpers for tests of InteractiveStream over a raw stub: write requests, read tagged responses.

async with stub_for(gateway) as stub:
    bidi = Bidi(stub)
    await bidi.start("demo")
    await bidi.turn("1", "hello brave world")
    events = await bidi.until_end_of("1")      # the deltas and the done (or error) of turn "1"
    outcome = await bidi.finish()              # half-close, read the rest and the status
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.routing.dispatch import Router
from server.types import StreamEvent, TextDelta

__all__ = ["Bidi", "Outcome", "UpstreamMeter", "assert_no_session_left", "eventually", "rid_of"]

# Only against a hang: every read ends on a message or the end of the stream. It is also the call's deadline,
# so it stays above the fakes' 30 s waits: a turn's upstream timers (cut to the deadline) cannot be what a
# test waiting for a disconnect sees.
TIMEOUT_S = 60.0


def rid_of(response: pb.InteractiveResponse) -> str:
    """The request_id a response is tagged with ("" for started and go_away)."""
    kind = response.WhichOneof("kind")
    if kind in ("delta", "done", "error"):
        return str(getattr(response, kind).request_id)
    return ""


@dataclass
class Outcome:
    """What a client saw after it half-closed: the remaining responses and the final status."""

    responses: list[pb.InteractiveResponse] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    error: grpc.aio.AioRpcError | None = None

    def kinds(self) -> list[str]:
        return [str(r.WhichOneof("kind")) for r in self.responses]


class Bidi:
    """One InteractiveStream call driven message by message."""

    def __init__(self, stub: pb_grpc.AIServiceAsyncStub, **call_options: Any) -> None:
        self.call = stub.InteractiveStream(timeout=TIMEOUT_S, **call_options)
        self.seen: list[pb.InteractiveResponse] = []

    async def send(self, **kind: Any) -> None:
        await self.call.write(pb.InteractiveRequest(**kind))

    async def start(self, model: str, **options: Any) -> pb.SessionStarted:
        await self.send(start=pb.SessionStart(model=model, **options))
        response = await self.read()
        assert response.WhichOneof("kind") == "started", response
        return response.started

    async def turn(self, request_id: str, content: str = "", **fields: Any) -> None:
        await self.send(message=pb.TurnRequest(request_id=request_id, content=content, **fields))

    async def cancel(self, request_id: str) -> None:
        await self.send(cancel=pb.CancelTurn(request_id=request_id))

    async def read(self) -> pb.InteractiveResponse:
        response = await asyncio.wait_for(self.call.read(), TIMEOUT_S)
        assert isinstance(response, pb.InteractiveResponse), "the stream ended"
        self.seen.append(response)
        return response

    async def until(self, done: Callable[[pb.InteractiveResponse], bool]) -> list[pb.InteractiveResponse]:
        """Read until (and including) the first response for which `done` is true."""
        responses = [await self.read()]
        while not done(responses[-1]):
            responses.append(await self.read())
        return responses

    async def until_end_of(self, request_id: str) -> list[pb.InteractiveResponse]:
        """Read until the `done` or `error` of `request_id`; returns that turn's responses only."""
        responses = await self.until(lambda r: r.WhichOneof("kind") in ("done", "error") and rid_of(r) == request_id)
        return [r for r in responses if rid_of(r) == request_id]

    async def finish(self) -> Outcome:
        """Half-close, then read everything until the stream ends."""
        await self.call.done_writing()
        return await self.rest()

    async def rest(self) -> Outcome:
        outcome = Outcome()
        try:
            while isinstance(response := await asyncio.wait_for(self.call.read(), TIMEOUT_S), pb.InteractiveResponse):
                outcome.responses.append(response)
                self.seen.append(response)
        except grpc.aio.AioRpcError as exc:
            outcome.error, outcome.code = exc, exc.code()
        return outcome


class UpstreamMeter:
    """Wraps a gateway's Router.stream to count the events pulled from upstreams and the streams open."""

    def __init__(self, router: Router) -> None:
        self._stream = router.stream
        self.deltas = 0
        self.open = 0
        self.most_open = 0

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        call: AsyncIterator[StreamEvent] = self._stream(*args, **kwargs)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            async for event in call:
                if isinstance(event, TextDelta):
                    self.deltas += 1
                yield event
        finally:
            self.open -= 1
            await call.aclose()  # type: ignore[attr-defined]  # an async generator

    def install(self, monkeypatch: Any, router: Router) -> UpstreamMeter:
        monkeypatch.setattr(router, "stream", self.stream)
        return self

    async def quiet(self, quiet_s: float = 0.3, wakeups: int = 30) -> bool:
        """Whether the delta count stays the same for `quiet_s` and at least `wakeups` turns of the event loop.

        That nothing happens can only be watched over a window. Counting wakeups as well as time keeps one
        long stall of a loaded machine (one wakeup, no chance for the gateway to run) from passing for quiet.
        """
        before = self.deltas
        for _ in range(wakeups):
            await asyncio.sleep(quiet_s / wakeups)
            if self.deltas != before:
                return False
        return True

    async def settled(self, *, timeout: float = TIMEOUT_S) -> int:
        """The delta count once it has stopped growing (see `quiet`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.quiet():
            assert loop.time() < deadline, f"upstream reads never stopped ({self.deltas} deltas)"
        return self.deltas


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    """Wait until `predicate` holds, re-checking as the gateway works; the timeout only prevents a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


async def assert_no_session_left(gateway: Gateway, timeout: float = TIMEOUT_S) -> None:
    """Every session has ended: no session registered, no task of a session still running."""
    await eventually(
        lambda: not gateway.service.sessions and not _session_tasks(),
        f"every session ended (left: {gateway.service.sessions} {_session_tasks()})",
        timeout,
    )


def _session_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("interactive ") and not t.done()]
