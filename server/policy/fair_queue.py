"""A bounded, fair wait for the gateway's call slots, instead of failing fast under overload.

The gateway serves at most `limits.max_concurrent_upstream` calls at once. A call that finds every slot
taken waits, at most `limits.queue_wait_s` and never past its own deadline, and is then refused with
RESOURCE_EXHAUSTED `GATEWAY_OVERLOADED` and RetryInfo, as before the queue existed. While calls wait, a
freed slot goes to:

1. the highest priority class with a call waiting: `interactive` before `batch` (the call's `x-priority`
   metadata; `interactive` when absent or unknown);
2. within that class, the next client in turn (round robin over the clients with calls waiting: deficit
   round robin with a cost of one call), so that a client with a thousand calls waiting gets one slot for
   every slot of a client with one;
3. within that client, its oldest call.

A freed slot is handed straight to the chosen waiter, so a newcomer can never take it first. A call that
gives up waiting (its client cancelled it, or its wait ran out) leaves the queue; one cancelled just as it
was handed a slot gives the slot back.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from server import defaults
from server.errors import GatewayOverloaded
from server.policy.seam import CallContext
from server.routing.catalog import ModelConfig
from server.types import ChatRequest

__all__ = ["ANONYMOUS", "PRIORITY_CLASSES", "PRIORITY_HEADER", "FairQueue", "priority_class"]

PRIORITY_HEADER = "x-priority"
PRIORITY_CLASSES = ("interactive", "batch")  # served in this order
ANONYMOUS = ""  # the one lane of calls without an authenticated client


def _before(timeout_s: float) -> float:
    """What is left of a call's deadline less a margin, so that the gateway's own refusal reaches the client
    before gRPC's bare DEADLINE_EXCEEDED."""
    margin = min(
        max(timeout_s * defaults.DEADLINE_MARGIN_SHARE, defaults.DEADLINE_MARGIN_S), defaults.DEADLINE_MARGIN_MAX_S
    )
    return timeout_s - margin


def priority_class(value: str | bytes | None) -> str:
    """The class an `x-priority` metadata value asks for; `interactive` unless it names another one."""
    return value if isinstance(value, str) and value in PRIORITY_CLASSES else PRIORITY_CLASSES[0]


class FairQueue:
    """The policy seam's admission control: `admit` takes a slot (waiting for one), `settle` gives it back."""

    def __init__(
        self,
        slots: int,
        max_wait_s: float,
        *,
        retry_after_s: float = defaults.OVERLOAD_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = self._slots = slots
        self._max_wait_s = max_wait_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        # Per class, the clients with calls waiting, in the order of their turn; per client, its calls.
        self._waiting: dict[str, OrderedDict[str, deque[asyncio.Future[None]]]] = {
            name: OrderedDict() for name in PRIORITY_CLASSES
        }
        self.queued = 0

    async def admit(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> None:
        if self.free > 0 and not self.queued:
            self.free -= 1
            return
        wait_s = self._max_wait_s if request.timeout_s is None else min(self._max_wait_s, _before(request.timeout_s))
        if wait_s <= 0:
            raise self._overloaded(0.0)
        started = self._clock()
        granted = self._enqueue(call.record.priority, call.client or ANONYMOUS)
        try:
            await asyncio.wait_for(asyncio.shield(granted), wait_s)
        except (TimeoutError, asyncio.CancelledError) as gave_up:
            if granted.done() and not granted.cancelled():
                self.settle_one()  # handed a slot in the same instant: give it back
            else:
                granted.cancel()
                self._forget(call.record.priority, call.client or ANONYMOUS, granted)
            if isinstance(gave_up, asyncio.CancelledError):
                raise
            raise self._overloaded(self._clock() - started) from None
        finally:
            call.record.queued_s = self._clock() - started

    def resize(self, slots: int, max_wait_s: float, retry_after_s: float) -> None:
        """A reloaded config's limits: the calls running keep their slots; the difference is added to (or
        taken from) the free ones, so that no more than `slots` run once the running ones have ended."""
        self.free += slots - self._slots
        self._slots, self._max_wait_s, self._retry_after_s = slots, max_wait_s, retry_after_s
        while self.free > 0 and self.queued:
            self.free -= 1
            self.settle_one()

    def settle(self, call: CallContext) -> None:
        """The call has ended: its slot goes to the next waiter in turn, or back to the free slots."""
        self.settle_one()

    def settle_one(self) -> None:
        for clients in self._waiting.values():
            while clients:
                client, calls = next(iter(clients.items()))
                granted = calls.popleft()
                self.queued -= 1
                if calls:
                    clients.move_to_end(client)  # its next call waits for the other clients' turns
                else:
                    del clients[client]
                if not granted.done():
                    granted.set_result(None)
                    return
        self.free += 1

    def _enqueue(self, priority: str, client: str) -> asyncio.Future[None]:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].setdefault(client, deque()).append(granted)
        self.queued += 1
        return granted

    def _forget(self, priority: str, client: str, granted: asyncio.Future[None]) -> None:
        calls = self._waiting[priority].get(client)
        if calls is None or granted not in calls:
            return
        calls.remove(granted)
        self.queued -= 1
        if not calls:
            del self._waiting[priority][client]

    def _overloaded(self, waited_s: float) -> GatewayOverloaded:
        return GatewayOverloaded(
            f"the gateway is at its limit of calls in flight and no slot freed up within {waited_s:.1f} s; "
            "retry after the delay in RetryInfo",
            retry_after_s=self._retry_after_s,
            metadata={"limit": "process", "waited_ms": str(round(waited_s * 1000))},
        )
