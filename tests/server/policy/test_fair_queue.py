"""FairQueue, one behaviour at a time: who gets a freed slot, and what a call that waits too long gets."""

from __future__ import annotations

import asyncio

import pytest

from server.errors import GatewayOverloaded
from server.observe.record import CallRecord
from server.policy.fair_queue import FairQueue, priority_class
from server.policy.seam import CallContext
from server.providers.demo import DemoProvider
from server.routing.catalog import Catalog, ModelConfig
from server.routing.dispatch import Router
from server.types import ChatMessage, ChatRequest, Role

MODEL = ModelConfig(name="demo", provider="demo")
ROUTER = Router(Catalog([MODEL], ["demo"]), {"demo": DemoProvider("demo")})
PATIENT = ChatRequest("demo", (ChatMessage(Role.USER, "hi"),))


def call(client: str | None, priority: str = "interactive") -> CallContext:
    return CallContext(CallRecord("Generate", client, priority=priority), ROUTER)


class Order:
    """Starts waiting calls and notes the order in which they get a slot."""

    def __init__(self, queue: FairQueue) -> None:
        self.queue = queue
        self.served: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, name: str, waiting: CallContext) -> None:
        async def admit() -> None:
            await self.queue.admit(waiting, MODEL, PATIENT)
            self.served.append(name)

        self.tasks.append(asyncio.create_task(admit()))
        queued = self.queue.queued
        while self.queue.queued == queued:  # until it is in the queue: each step is the queue's own
            await asyncio.sleep(0)

    async def free(self, slots: int) -> None:
        before = len(self.served)
        for _ in range(slots):
            self.queue.settle_one()
        while len(self.served) < before + slots:
            await asyncio.sleep(0)


async def test_a_free_slot_is_taken_at_once_and_given_back_on_settle() -> None:
    queue = FairQueue(1, 5.0)
    first = call("a")
    await queue.admit(first, MODEL, PATIENT)
    assert queue.free == 0
    queue.settle(first)
    assert queue.free == 1
    assert first.record.queued_s is None


async def test_a_client_with_many_calls_waiting_gets_one_slot_for_each_of_another_clients() -> None:
    queue = FairQueue(1, 60.0)
    await queue.admit(call("flood"), MODEL, PATIENT)
    order = Order(queue)
    for i in range(4):
        await order.start(f"flood-{i}", call("flood"))
    await order.start("steady-0", call("steady"))
    await order.start("steady-1", call("steady"))

    await order.free(6)
    assert order.served == ["flood-0", "steady-0", "flood-1", "steady-1", "flood-2", "flood-3"]


async def test_interactive_calls_are_served_before_batch_ones() -> None:
    queue = FairQueue(1, 60.0)
    await queue.admit(call("a"), MODEL, PATIENT)
    order = Order(queue)
    await order.start("batch-0", call("a", "batch"))
    await order.start("batch-1", call("b", "batch"))
    await order.start("interactive", call("c", "interactive"))

    await order.free(3)
    assert order.served == ["interactive", "batch-0", "batch-1"]


async def test_a_call_that_waits_too_long_is_refused_with_retry_info_and_leaves_the_queue() -> None:
    queue = FairQueue(1, 0.05, retry_after_s=0.5)
    await queue.admit(call("a"), MODEL, PATIENT)
    waiting = call("b")
    with pytest.raises(GatewayOverloaded) as refused:
        await queue.admit(waiting, MODEL, PATIENT)

    assert refused.value.retry_after_s == 0.5
    assert refused.value.metadata["limit"] == "process"
    assert int(refused.value.metadata["waited_ms"]) >= 50
    assert waiting.record.queued_s is not None
    assert queue.queued == 0


async def test_with_no_wait_configured_a_call_is_refused_at_once() -> None:
    queue = FairQueue(1, 0.0)
    await queue.admit(call("a"), MODEL, PATIENT)
    with pytest.raises(GatewayOverloaded) as refused:
        await queue.admit(call("b"), MODEL, PATIENT)
    assert refused.value.metadata["waited_ms"] == "0"
    assert queue.queued == 0


async def test_a_call_cancelled_while_it_waits_leaves_the_queue_and_takes_no_slot() -> None:
    queue = FairQueue(1, 60.0)
    running = call("a")
    await queue.admit(running, MODEL, PATIENT)
    order = Order(queue)
    await order.start("cancelled", call("b"))
    order.tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await order.tasks[0]

    assert queue.queued == 0
    queue.settle(running)
    assert queue.free == 1


async def test_a_smaller_limit_after_a_reload_takes_effect_as_running_calls_end() -> None:
    queue = FairQueue(2, 60.0)
    running = [call("a"), call("a")]
    for each in running:
        await queue.admit(each, MODEL, PATIENT)
    queue.resize(1, 60.0, 1.0)
    queue.settle(running[0])
    assert queue.free == 0  # one call still runs, and the limit is now one
    queue.settle(running[1])
    assert queue.free == 1


def test_an_unknown_or_missing_priority_is_interactive() -> None:
    assert [priority_class(v) for v in ("batch", "interactive", "urgent", None, b"batch")] == [
        "batch",
        "interactive",
        "interactive",
        "interactive",
        "interactive",
    ]
