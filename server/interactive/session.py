"""One InteractiveStream session: a reader task, turn tasks and the writer, joined by one bounded outbox.

    client ─► reader task ─► waiting turns ─► turn tasks (≤ max_in_flight) ─► router.stream(...)
                                                   │ TextDelta… Finish
    client ◄─ writer (the handler: context.write) ◄┴─ outbox (≤ queue_size messages)

- The first message is `start`. A conversation runs one turn at a time, in order, each with the history
  of the turns before it; a pipeline runs up to max_in_flight independent requests at once. A message
  sent while a conversation turn runs waits for it (it is queued, it does not interrupt); `cancel`
  interrupts a turn, running or waiting.
- Backpressure: every outgoing message passes the bounded outbox. A client that stops reading fills
  HTTP/2 flow control, then the outbox; turn tasks block on `put` and stop pulling from their upstream
  streams, whose TCP windows then close. With max_queued_turns turns waiting for a slot, the reader stops
  reading the client. A session holds at most the outbox, the waiting turns and the history.
- Endings: half-close → accepted turns finish, then OK. go_away (drain) → accepted turns may finish, new
  ones get UNAVAILABLE SHUTTING_DOWN, then OK. A protocol violation → the stream ends at once with
  INVALID_ARGUMENT PROTOCOL_VIOLATION. A cancelled or vanished client → every task is cancelled, and with
  it every upstream request (each turn closes its stream with `aclosing`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import aclosing
from typing import Any

import grpc

from generated import ai_service_pb2 as pb
from server import defaults
from server.config import InteractiveConfig
from server.decoding import Malformed, malformed_request
from server.errors import GatewayError, InternalError, ProtocolViolation, ShuttingDown, UnknownRequestId
from server.interactive import wire
from server.interactive.history import History, Plan
from server.interactive.outbox import Outbox
from server.interactive.wire import SessionOptions, TurnSpec
from server.observe.record import CallRecord
from server.observe.request_id import REQUEST_ID_HEADER
from server.observe.trace import CallTrace
from server.policy.seam import CallContext, Seam
from server.tool_calls import ToolCallAssembler
from server.types import ChatRequest, Finish, ReasoningDelta, TextDelta, ToolCallDelta

__all__ = ["SESSION_ID_HEADER", "InteractiveSession"]

# The initial-metadata key that carries the session id (also in `started`).
SESSION_ID_HEADER = "session-id"

log = logging.getLogger(__name__)


class _Turn:
    """One accepted turn, from waiting to its `done` or `error`."""

    __slots__ = (
        *("call", "cancel_requested", "number", "plan", "reply", "settled", "spec", "started", "task"),
        "tool_calls",
    )

    def __init__(self, spec: TurnSpec, call: CallContext, number: int) -> None:
        self.spec = spec
        self.call = call  # its record counts the deltas and holds the outcome
        self.number = number  # 1 for the session's first accepted turn
        self.task: asyncio.Task[None] | None = None  # None while waiting for a slot
        self.started = False  # its task has begun: a cancel must interrupt it
        self.cancel_requested = False
        self.settled = False  # the upstream finished: a cancel no longer applies
        self.plan: Plan | None = None  # conversation: the history it was sent with
        self.reply: list[str] = []  # conversation: the reply, for the history
        self.tool_calls = ToolCallAssembler()  # the reply's tool calls, for `done` and the history

    @property
    def deltas(self) -> int:
        return self.call.record.deltas

    @property
    def trimmed(self) -> int:
        return self.plan.trimmed if self.plan else 0


class InteractiveSession:
    def __init__(
        self,
        seam: Seam,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        limits: InteractiveConfig,
        max_request_bytes: int,
    ) -> None:
        self.id = secrets.token_hex(8)
        self._seam = seam
        # The session's own record and trace (service.py sets them); each turn has its own as well.
        self.record = CallRecord("InteractiveStream", None)
        self.trace = CallTrace()
        self._context = context
        self._limits = limits
        self._max_request_bytes = max_request_bytes
        self._outbox: Outbox[pb.InteractiveResponse] = Outbox(limits.queue_size)
        self._options: SessionOptions | None = None
        self._history = History(max_messages=limits.max_history_messages, max_bytes=limits.max_history_bytes)
        self._live: dict[str, _Turn] = {}  # waiting or running, by request_id
        self._waiting: deque[_Turn] = deque()
        self._running = 0
        self._finished: OrderedDict[str, None] = OrderedDict()  # the most recent finished request_ids
        self._room = asyncio.Event()  # set while fewer than max_queued_turns turns wait
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._half_closed = False
        self._draining = False
        self._ending = False

    @property
    def buffered(self) -> int:
        """Outgoing messages waiting for the client to read them (at most `queue_size`, plus a go_away)."""
        return len(self._outbox)

    async def run(self, requests: AsyncIterator[pb.InteractiveRequest | Malformed]) -> None:
        """Serve the session. Returns when it ends with OK; raises a GatewayError to end it with that status.
        The servicer has sent the headers, `SESSION_ID_HEADER` among them (see service.py)."""
        self._spawn(self._read(requests), "reader")
        try:
            while (message := await self._outbox.get()) is not None:
                await self._context.write(message)
        finally:
            await self._stop_tasks()

    def go_away(self, time_left_s: float) -> None:
        """The gateway is draining: tell the client, refuse new turns, end once accepted turns are done."""
        if not self._draining:
            self._draining = True
            self._outbox.push(wire.go_away(time_left_s))
            self._end_if_done()

    # --- reading -------------------------------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[pb.InteractiveRequest | Malformed]) -> None:
        try:
            async for request in requests:
                await self._dispatch(request)
        except GatewayError as error:
            self._outbox.fail(error)
            return
        except Exception as exc:  # a bug: the stream ends with INTERNAL, the traceback goes to the log
            log.exception("unexpected error reading InteractiveStream session %s", self.id, exc_info=exc)
            self._outbox.fail(InternalError("internal gateway error; the gateway log has the details"))
            return
        self._half_closed = True
        self._end_if_done()

    async def _dispatch(self, request: pb.InteractiveRequest | Malformed) -> None:
        if isinstance(request, Malformed):
            raise malformed_request(request)
        kind = request.WhichOneof("kind")
        if kind is None:
            raise ProtocolViolation("protocol violation: an InteractiveRequest must set start, message or cancel")
        if self._options is None:
            if kind != "start":
                raise ProtocolViolation(f"protocol violation: the first message must be `start`, got `{kind}`")
            await self._start(request.start)
        elif kind == "start":
            raise ProtocolViolation("protocol violation: `start` comes once, as the first message; it came again")
        elif kind == "message":
            await self._accept(request.message)
        else:
            await self._cancel(request.cancel.request_id)

    async def _start(self, start: pb.SessionStart) -> None:
        self._options = wire.session_options(
            start,
            catalog=self._seam.catalog,
            max_in_flight=self._limits.max_in_flight,
            max_request_bytes=self._max_request_bytes,
        )
        await self._outbox.put(wire.started(self.id, self._options))

    async def _accept(self, message: pb.TurnRequest) -> None:
        request_id = message.request_id
        self._check_new_id(request_id)
        assert self._options is not None  # _dispatch accepts turns only after start
        self.record.turns = (self.record.turns or 0) + 1
        call = self._seam.begin(
            "InteractiveStream.turn",
            self.record.client,
            message.model or self._options.model.name,
            request_id=self.record.request_id,
            session=self.id,
            turn_request_id=request_id,
            parent=self.trace,
            priority=self.record.priority,
            end_user=self.record.end_user,
        )
        try:
            if self._draining:
                raise ShuttingDown("the gateway is shutting down: this session takes no new turns (see go_away)")
            spec = wire.turn_spec(
                message, self._options, catalog=call.router.catalog, max_request_bytes=self._max_request_bytes
            )
        except GatewayError as error:
            self._remember(request_id)
            self._seam.end(call, error)
            await self._outbox.put(wire.turn_error(request_id, error, call.rate_limits))
            return
        turn = _Turn(spec, call, self.record.turns)
        self._live[request_id] = turn
        self._waiting.append(turn)
        self._start_waiting()
        await self._room.wait()

    def _check_new_id(self, request_id: str) -> None:
        if not request_id:
            raise ProtocolViolation("protocol violation: message.request_id is required; it tags the turn's events")
        if len(request_id.encode("utf-8", "surrogatepass")) > defaults.INTERACTIVE_MAX_REQUEST_ID_BYTES:
            raise ProtocolViolation(
                f"protocol violation: message.request_id is longer than "
                f"{defaults.INTERACTIVE_MAX_REQUEST_ID_BYTES} bytes"
            )
        if request_id in self._live or request_id in self._finished:
            raise ProtocolViolation(
                f"protocol violation: request_id {request_id!r} is already used in this session",
                metadata={"request_id": request_id},
            )

    async def _cancel(self, request_id: str) -> None:
        if not request_id:
            raise ProtocolViolation("protocol violation: cancel.request_id is required")
        turn = self._live.get(request_id)
        if turn is None:
            # TurnError.request_id stays empty: this error ends no turn (the id is in the ErrorInfo).
            unknown = UnknownRequestId(request_id)
            unknown.metadata["session_request_id"] = self.record.request_id
            await self._outbox.put(wire.turn_error("", unknown))
        elif turn.task is None:  # still waiting for a slot: it ends without having run
            self._waiting.remove(turn)
            self._update_room()
            self._seam.end(turn.call, code="CANCELLED")
            await self._outbox.put(wire.cancelled(request_id, turn.spec.model.name, 0, 0))
            self._finish(turn)
        else:
            turn.cancel_requested = True
            if turn.started and not turn.settled:
                turn.task.cancel()  # raised where the turn awaits: in the upstream read, or in `put`

    # --- turns ---------------------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        assert self._options is not None
        while self._waiting and self._running < self._options.max_in_flight and not self._ending:
            turn = self._waiting.popleft()
            self._running += 1
            turn.task = self._spawn(self._run(turn), f"turn {turn.spec.request_id}")
        self._update_room()

    def _update_room(self) -> None:
        if len(self._waiting) < self._limits.max_queued_turns:
            self._room.set()
        else:
            self._room.clear()

    async def _run(self, turn: _Turn) -> None:
        turn.started = True
        request_id, call = turn.spec.request_id, turn.call
        try:
            if turn.cancel_requested:  # cancelled between being scheduled and running
                self._seam.end(call, code="CANCELLED")
                await self._outbox.put(wire.cancelled(request_id, turn.spec.model.name, 0, 0))
            else:
                await self._answer(turn)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            self._seam.end(call, code="CANCELLED")
            if not turn.cancel_requested or self._ending or task is None:
                raise
            task.uncancel()  # the client's `cancel`, not the session's end: the turn ends with `done`
            if turn.plan is not None and turn.reply:
                self._history.commit(turn.plan, "".join(turn.reply))
            await self._outbox.put(
                wire.cancelled(request_id, turn.spec.model.name, turn.deltas, turn.trimmed, call.rate_limits)
            )
        except GatewayError as error:
            if turn.deltas:
                error.metadata["deltas_sent"] = str(turn.deltas)
            self._seam.end(call, error)
            await self._outbox.put(wire.turn_error(request_id, error, call.rate_limits))
        except Exception as exc:  # a bug: this turn fails with INTERNAL, the session goes on
            log.exception("unexpected error in InteractiveStream session %s", self.id, exc_info=exc)
            internal = InternalError("internal gateway error; the gateway log has the details")
            self._seam.end(call, internal)
            await self._outbox.put(wire.turn_error(request_id, internal, call.rate_limits))
        finally:
            self._seam.end(call, code="CANCELLED")  # the session ended under it (no-op when it ended above)
            self._running -= 1
            self._finish(turn)
            self._start_waiting()

    async def _answer(self, turn: _Turn) -> None:
        options, spec = self._options, turn.spec
        assert options is not None
        if options.pipeline:
            messages = spec.messages
        else:
            turn.plan = self._history.plan(spec.messages)
            messages = turn.plan.messages
        chat = ChatRequest(
            spec.model.name,
            (*options.system, *messages),
            spec.params,
            self._context.time_remaining(),
            # The session's id and the turn's number: turns running at once never share an id upstream.
            headers=((REQUEST_ID_HEADER, f"{self.record.request_id}.{turn.number}"),),
            needs=spec.needs,
        )
        finish: Finish | None = None
        record = turn.call.record
        async with aclosing(await self._seam.stream(turn.call, spec.model, chat)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    if not record.deltas:
                        record.first_token()
                    record.deltas += event.pieces  # a coalesced delta counts every upstream delta it joins
                    if turn.plan is not None:
                        turn.reply.append(event.text)
                    await self._outbox.put(wire.delta(spec.request_id, event.text))
                elif isinstance(event, ToolCallDelta):
                    if not record.deltas:
                        record.first_token()
                    record.deltas += 1
                    turn.tool_calls.add(event)
                    await self._outbox.put(wire.tool_call_delta(spec.request_id, event))
                elif isinstance(event, ReasoningDelta):  # relayed, not kept in the history
                    if not record.deltas:
                        record.first_token()
                    record.deltas += 1
                    await self._outbox.put(wire.reasoning_delta(spec.request_id, event.text))
                else:
                    finish = event
                    turn.settled = True
                    record.answered(finish)
        if finish is None:
            raise InternalError("the upstream stream ended without a finish event")
        calls = turn.tool_calls.calls()
        if turn.plan is not None:
            self._history.commit(turn.plan, "".join(turn.reply), calls, finish.reasoning_blocks)
        self._seam.end(turn.call)  # before `done` leaves
        await self._outbox.put(wire.done(spec.request_id, finish, turn.trimmed, calls, turn.call.rate_limits))

    def _finish(self, turn: _Turn) -> None:
        del self._live[turn.spec.request_id]
        self._remember(turn.spec.request_id)
        self._end_if_done()

    def _remember(self, request_id: str) -> None:
        self._finished[request_id] = None
        if len(self._finished) > defaults.INTERACTIVE_REMEMBERED_IDS:
            self._finished.popitem(last=False)

    def _end_if_done(self) -> None:
        if (self._half_closed or self._draining) and not self._live:
            self._outbox.close()

    # --- tasks ---------------------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"interactive {self.id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _stop_tasks(self) -> None:
        self._ending = True
        self._outbox.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
