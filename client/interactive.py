"""InteractiveStream sessions for the asyncio client: a conversation or a pipeline over one stream.

    async with client.interactive(model="demo", system="Be brief.") as session:
        async for event in session.send("hello"):     # TextDelta..., then the TurnResult
            ...
        result = await session.send("and now?")        # or only the TurnResult
        turn = session.send("a long story")
        await turn.cancel()                            # it ends with finish_reason CANCELLED

    async with client.interactive(model="demo", mode="pipeline", max_in_flight=8) as session:
        async for result in session.pipeline(["one", "two", "three"]):   # in the order they finish
            print(result.request_id, result.text)

One task reads the stream and hands every event to its turn; a turn keeps its events until they are read.
A turn's failure raises the client's GatewayError (with `request_id` set) from that turn only: the session
goes on. Leaving the `async with` block normally half-closes the stream and waits for the turns still
running; leaving it with an exception cancels the call, and the server cancels every turn.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, TypeAlias, overload

import grpc

from client.errors import (
    CLIENT_DOMAIN,
    GatewayError,
    StreamProtocolError,
    UnavailableError,
    UnknownStatusError,
    error_from_rpc_error,
    error_from_rpc_status,
)
from client.types import (
    MessageLike,
    ReasoningDelta,
    Sampling,
    SamplingOptions,
    SessionMode,
    TextDelta,
    TurnEvent,
    TurnResult,
)
from client.wire import cancel_request, session_mode, tool_call_delta, turn_request, turn_result
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc

__all__ = ["SESSION_ID_HEADER", "AsyncSession", "AsyncTurn", "PipelineRequests", "lost_to_a_drain"]

# The initial-metadata key with which the gateway's session says it is running.
SESSION_ID_HEADER = "session-id"

# What `pipeline` takes: prompts (or message lists), or a mapping of request_id to prompt.
Prompt: TypeAlias = str | Sequence[MessageLike]
PipelineRequests: TypeAlias = Iterable[Prompt] | Mapping[str, Prompt]
_Call: TypeAlias = "grpc.aio.StreamStreamCall[pb.InteractiveRequest, pb.InteractiveResponse]"
_SESSION_SAMPLING = SamplingOptions()  # a turn's unset options are the session's

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.12


class AsyncTurn:
    """One turn of a session: async-iterate it for its events, or await it for its TurnResult."""

    def __init__(self, session: AsyncSession, request_id: str, *, keep_events: bool = True) -> None:
        self.request_id = request_id
        self._session = session
        self._keep_events = keep_events
        self._events: asyncio.Queue[TurnEvent | GatewayError] = asyncio.Queue()
        self._text: list[str] = []
        self._outcome: TurnResult | GatewayError | None = None
        self._ended = asyncio.Event()
        self._iterated = False
        self._callbacks: list[Callable[[AsyncTurn], None]] = []

    def __repr__(self) -> str:
        return f"AsyncTurn({self.request_id!r}, done={self.done})"

    @property
    def done(self) -> bool:
        """True once the turn has ended (its result or error has arrived)."""
        return self._ended.is_set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> TurnEvent:
        if self._iterated or (self.done and self._events.empty()):
            raise StopAsyncIteration
        event = await self._events.get()
        if isinstance(event, GatewayError):
            self._iterated = True
            raise event
        if isinstance(event, TurnResult):
            self._iterated = True
        return event

    def __await__(self) -> Generator[object, None, TurnResult]:
        return self.result().__await__()

    async def result(self) -> TurnResult:
        """Wait for the end of the turn: its TurnResult, or its error raised."""
        await self._ended.wait()
        self._iterated = True
        if isinstance(self._outcome, GatewayError):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    async def cancel(self) -> None:
        """Ask the server to stop this turn; it then ends with finish_reason CANCELLED (or its own end)."""
        if not self.done:
            await self._session.cancel(self.request_id)

    # --- fed by the session's reader ----------------------------------------------------------------------

    def _delta(self, text: str) -> None:
        self._text.append(text)
        if self._keep_events:
            self._events.put_nowait(TextDelta(text))

    def _reasoning(self, text: str) -> None:
        if self._keep_events:
            self._events.put_nowait(ReasoningDelta(text))

    def _tool_call(self, piece: pb.ToolCallDelta) -> None:
        if self._keep_events:
            self._events.put_nowait(tool_call_delta(piece))

    def _done(self, done: pb.TurnDone) -> None:
        self._end(turn_result(done, "".join(self._text)))

    def _end(self, outcome: TurnResult | GatewayError) -> None:
        if self.done:
            return
        self._outcome = outcome
        if self._keep_events:
            self._events.put_nowait(outcome)
        self._ended.set()
        for callback in self._callbacks:
            callback(self)

    def _on_end(self, callback: Callable[[AsyncTurn], None]) -> None:
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)


class AsyncSession:
    """One InteractiveStream call. Made by `AsyncAIClient.interactive`; use it as an async context manager.

    After opening: `session_id`, `model`, `mode` and `max_in_flight` are what the server chose. `draining`
    and `time_left` (seconds) are set when the server announces its shutdown (go_away), and the callbacks
    given to `add_go_away_callback` are called. `ended` is true once the stream is over: a turn sent then
    fails at once (UNAVAILABLE SHUTTING_DOWN after a drain: send it again in a new session). `errors`
    collects the errors that belong to no turn (a cancel of a turn that had already finished).
    """

    def __init__(
        self,
        stub: pb_grpc.AIServiceAsyncStub,
        start: pb.InteractiveRequest,
        *,
        timeout: float | None,
        to_error: Callable[[grpc.RpcError], GatewayError] = error_from_rpc_error,
    ) -> None:
        self._stub = stub
        self._to_error = to_error
        self._start = start
        self._timeout = timeout
        self._outgoing: asyncio.Queue[pb.InteractiveRequest | None] = asyncio.Queue()
        self._turns: dict[str, AsyncTurn] = {}
        self._ids = itertools.count(1)
        self._call: _Call | None = None
        self._reader: asyncio.Task[None] | None = None
        self._half_closed = False
        self._ended = asyncio.Event()
        self._failure: GatewayError | None = None
        self._failure_seen = False  # a turn has raised the failure already
        self.session_id = ""
        self.model = ""
        self.mode: SessionMode = "conversation"
        self.max_in_flight = 1
        self.draining = False
        self.time_left: float | None = None
        self.errors: list[GatewayError] = []
        self._go_away_callbacks: list[Callable[[AsyncSession], None]] = []

    def __repr__(self) -> str:
        return f"AsyncSession(session_id={self.session_id!r}, model={self.model!r}, mode={self.mode!r})"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()

    async def open(self) -> None:
        """Start the call, send `start`, and wait for the server's `started`."""
        call = self._call = self._stub.InteractiveStream(self._requests(), timeout=self._timeout)
        try:
            # Write only once the session's headers say it runs. A call refused at once (authentication,
            # a draining gateway) has no such headers, and a write racing its end would replace the
            # server's status with INTERNAL "Internal error from Core" (grpc/grpc#36066).
            if any(key == SESSION_ID_HEADER for key, _ in await call.initial_metadata() or ()):
                self._outgoing.put_nowait(self._start)
            started = await self._started(call)
        except BaseException:
            self._half_closed = True
            self._outgoing.put_nowait(None)
            call.cancel()
            raise
        self.session_id, self.model = started.session_id, started.model
        self.mode, self.max_in_flight = session_mode(started.mode), started.max_in_flight
        self._reader = asyncio.create_task(self._read(call), name=f"session {self.session_id} reader")

    @property
    def ended(self) -> bool:
        """True once the stream has ended, by the server or by `close`/`abort`."""
        return self._ended.is_set()

    def add_go_away_callback(self, callback: Callable[[AsyncSession], None]) -> None:
        """Call `callback(session)` when the server announces its shutdown; at once if it already has."""
        if self.draining:
            callback(self)
        else:
            self._go_away_callbacks.append(callback)

    def send(
        self,
        content: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        request_id: str | None = None,
        model: str | None = None,
        sampling: SamplingOptions | None = None,
        **keywords: Unpack[Sampling],
    ) -> AsyncTurn:
        """Send a turn and return it at once. `content` is the user's text; `messages` come before it (a
        conversation appends them to its history; a pipeline request may be `messages` alone). `model` and
        the sampling options override the session's for this turn. `request_id` defaults to t1, t2, ...
        After `close` or `abort` it raises RuntimeError; after the server ended the session, the turn fails."""
        return self._send(content, messages, request_id, model, SamplingOptions.of(sampling, keywords))

    async def cancel(self, request_id: str) -> None:
        """Ask the server to stop the turn `request_id` (running or waiting); it ends with CANCELLED."""
        if not self._half_closed and not self._ended.is_set():
            self._outgoing.put_nowait(cancel_request(request_id))

    @overload
    def pipeline(
        self, requests: PipelineRequests, *, return_exceptions: Literal[False] = ...
    ) -> AsyncGenerator[TurnResult, None]: ...

    @overload
    def pipeline(
        self, requests: PipelineRequests, *, return_exceptions: Literal[True]
    ) -> AsyncGenerator[TurnResult | GatewayError, None]: ...

    async def pipeline(
        self, requests: PipelineRequests, *, return_exceptions: bool = False
    ) -> AsyncGenerator[TurnResult | GatewayError, None]:
        """Send every request and yield each TurnResult as it finishes, tagged with its request_id.

        A str is a user prompt, a sequence a full message list; a mapping's keys are the request_ids. The
        session's model and sampling options apply (`send` overrides them for one turn).
        At most twice max_in_flight requests are outstanding, so the server always has the next one while
        nothing is buffered without bound. A failed request raises its error (the others are then
        cancelled), or with `return_exceptions=True` is yielded as the error, like asyncio.gather.
        """
        items = iter(requests.items() if isinstance(requests, Mapping) else ((None, r) for r in requests))
        window = 2 * max(self.max_in_flight, 1)
        finished: asyncio.Queue[AsyncTurn] = asyncio.Queue()
        live: set[AsyncTurn] = set()

        def submit() -> None:
            while len(live) < window and (item := next(items, None)) is not None:
                request_id, prompt = item
                content, messages = (prompt, None) if isinstance(prompt, str) else (None, prompt)
                turn = self._send(content, messages, request_id, None, _SESSION_SAMPLING, keep_events=False)
                live.add(turn)
                turn._on_end(finished.put_nowait)

        try:
            submit()
            while live:
                turn = await finished.get()
                live.discard(turn)
                submit()
                outcome = turn._outcome
                assert outcome is not None
                if isinstance(outcome, GatewayError) and not return_exceptions:
                    raise outcome
                yield outcome
        finally:
            for turn in live:
                await turn.cancel()

    async def close(self) -> None:
        """Half-close: the server finishes the turns still running, then ends the session. Waits for that,
        and raises the session's error if it ended with one that no turn has raised."""
        if not self._half_closed:
            self._half_closed = True
            self._outgoing.put_nowait(None)
        await self._ended.wait()
        if self._failure is not None and not self._failure_seen:
            self._failure_seen = True
            raise self._failure

    async def abort(self) -> None:
        """Cancel the call: the server cancels every turn. Turns not yet ended raise a CANCELLED error."""
        self._half_closed = True
        self._outgoing.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await self._ended.wait()

    # --- the stream ---------------------------------------------------------------------------------------

    def _send(
        self,
        content: str | None,
        messages: Sequence[MessageLike] | None,
        request_id: str | None,
        model: str | None,
        sampling: SamplingOptions,
        *,
        keep_events: bool = True,
    ) -> AsyncTurn:
        if request_id is None:
            request_id = f"t{next(self._ids)}"
        elif request_id in self._turns:
            raise ValueError(f"request_id {request_id!r} belongs to a turn that has not ended")
        if self._half_closed:
            raise RuntimeError("the session is closed; start a new one with client.interactive(...)")
        turn = AsyncTurn(self, request_id, keep_events=keep_events)
        if self._ended.is_set():
            turn._end(self._failure or _ended_error(request_id, self.draining))
            return turn
        self._turns[request_id] = turn
        request = turn_request(request_id, content=content, messages=messages, model=model, sampling=sampling)
        self._outgoing.put_nowait(request)
        return turn

    async def _started(self, call: _Call) -> pb.SessionStarted:
        try:
            while isinstance(response := await call.read(), pb.InteractiveResponse):
                if response.WhichOneof("kind") == "started":
                    return response.started
                self._dispatch(response)  # a go_away can come first
        except grpc.aio.AioRpcError as exc:
            raise self._to_error(exc) from exc
        raise UnavailableError(
            grpc.StatusCode.UNAVAILABLE,
            "the server ended the session before it started (it is shutting down)",
            reason="SHUTTING_DOWN",
            domain=CLIENT_DOMAIN,
        )

    async def _requests(self) -> AsyncIterator[pb.InteractiveRequest]:
        while (request := await self._outgoing.get()) is not None:
            yield request

    async def _read(self, call: _Call) -> None:
        failure: GatewayError | None = None
        try:
            while isinstance(response := await call.read(), pb.InteractiveResponse):
                self._dispatch(response)
        except grpc.aio.AioRpcError as exc:
            failure = None if lost_to_a_drain(exc, self.draining) else self._to_error(exc)
        except asyncio.CancelledError:  # the call was cancelled by `abort`
            failure = UnknownStatusError(grpc.StatusCode.CANCELLED, "the session was cancelled", domain=CLIENT_DOMAIN)
        finally:
            self._failure = failure
            self._failure_seen = bool(self._turns) and failure is not None
            for turn in self._turns.values():
                turn._end(failure or _unanswered_error(turn.request_id, self.draining))
            self._turns.clear()
            self._ended.set()

    def _dispatch(self, response: pb.InteractiveResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "delta":
            if (turn := self._turns.get(response.delta.request_id)) is not None:
                if response.delta.HasField("tool_call"):
                    turn._tool_call(response.delta.tool_call)
                elif response.delta.reasoning:
                    turn._reasoning(response.delta.reasoning)
                else:
                    turn._delta(response.delta.text)
        elif kind == "done":
            if (turn := self._turns.pop(response.done.request_id, None)) is not None:
                turn._done(response.done)
        elif kind == "error":
            request_id = response.error.request_id
            error = error_from_rpc_status(response.error.status, request_id=request_id)
            if (turn := self._turns.pop(request_id, None)) is not None:
                turn._end(error)
            else:
                self.errors.append(error)
        elif kind == "go_away":
            if response.go_away.HasField("time_left"):
                self.time_left = response.go_away.time_left.ToTimedelta().total_seconds()
            self.draining = True
            for callback in self._go_away_callbacks:
                callback(self)
            self._go_away_callbacks.clear()


def lost_to_a_drain(exc: grpc.aio.AioRpcError, draining: bool) -> bool:
    """Whether the call's status is grpc's own INTERNAL for a write that raced the end of a session the gateway
    was draining (grpc/grpc#36066): the gateway had sent go_away and ended the session with nothing of ours in
    flight, and a turn written in that instant replaced its status with this one. The turns still waiting are
    then unanswered by the drain, not failed by an internal error."""
    return draining and exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _CORE_INTERNAL


# The message grpc's C core gives a call that failed inside the core itself, not a status a server sent.
_CORE_INTERNAL = "Internal error from Core"


def _ended_error(request_id: str, draining: bool) -> GatewayError:
    if draining:  # the session ended because the gateway drained: the turn is for a new session
        return UnavailableError(
            grpc.StatusCode.UNAVAILABLE,
            f"the session ended when the gateway shut down; turn {request_id!r} was not sent, send it in a new session",
            reason="SHUTTING_DOWN",
            domain=CLIENT_DOMAIN,
            request_id=request_id,
        )
    return StreamProtocolError(
        f"the server ended the session without go_away; turn {request_id!r} was not sent", reason="SESSION_ENDED"
    )


def _unanswered_error(request_id: str, draining: bool) -> GatewayError:
    if draining:  # the gateway sent go_away and ended the session before it read this turn
        return UnavailableError(
            grpc.StatusCode.UNAVAILABLE,
            f"the gateway shut down before it received turn {request_id!r}; it was not processed, retry it",
            reason="SHUTTING_DOWN",
            domain=CLIENT_DOMAIN,
            request_id=request_id,
        )
    return StreamProtocolError(f"the session ended before turn {request_id!r} finished", reason="TURN_UNFINISHED")
