"""RedisQuotaStore against a real redis-server: the same answers as MemoryQuotaStore for the same calls on
the same clock (each scenario runs on both and compares), atomic under concurrency, and what a call gets
when Redis does not answer."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from server.config import ClientLimits
from server.errors import LimitsUnavailable
from server.observe.request_id import CURRENT_REQUEST_ID
from server.policy.redis_store import RedisQuotaStore
from server.policy.store import Ask, Granted, MemoryQuotaStore, Refused
from tests.redis_server import RedisServer, run_redis
from tests.server.policy.test_store import Clock, rounded

TIMEOUT_S = 5.0  # only against a hang: loopback Redis answers in well under a millisecond


@dataclass(frozen=True)
class Admit:
    client: str
    limits: ClientLimits
    tokens: int = 0


@dataclass(frozen=True)
class Settle:
    admitted: int  # index of the Admit among the scenario's steps
    tokens_used: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Tick:
    seconds: float


Step = Admit | Settle | Tick
RPM3 = ClientLimits(requests_per_minute=3)
TPM100 = ClientLimits(tokens_per_minute=100)
EVERY = ClientLimits(
    requests_per_minute=10, tokens_per_minute=100, concurrent_streams=2, budget_usd_per_day=1, budget_usd_per_month=2
)
SCENARIOS: dict[str, list[Step]] = {
    "requests refill evenly": [
        Admit("a", RPM3),
        Admit("a", RPM3),
        Admit("a", RPM3),
        Admit("a", RPM3),
        Tick(19.9),
        Admit("a", RPM3),
        Tick(0.1),
        Admit("a", RPM3),
    ],
    "a refusal takes nothing": [Admit("a", EVERY, 90), Admit("a", EVERY, 20), Admit("a", EVERY, 10)],
    "tokens corrected into debt": [
        Admit("a", TPM100, 50),
        Settle(0, tokens_used=150),
        Admit("a", TPM100, 10),
        Tick(36),
        Admit("a", TPM100, 10),
    ],
    "a claim above the limit": [Admit("a", TPM100, 250), Admit("a", TPM100, 250), Tick(150), Admit("a", TPM100, 250)],
    "concurrency comes back": [Admit("a", EVERY), Admit("a", EVERY), Admit("a", EVERY), Settle(0), Admit("a", EVERY)],
    "budgets reset at midnight": [
        Admit("a", EVERY),
        Settle(0, cost_usd=1.5),
        Admit("a", EVERY),
        Tick(30),
        Admit("a", EVERY),
        Settle(4, cost_usd=1.0),
        Admit("a", EVERY),
    ],
    "clients apart": [Admit("a", RPM3), Admit("a", RPM3), Admit("a", RPM3), Admit("b", RPM3), Admit("a", RPM3)],
}


async def play(store: MemoryQuotaStore | RedisQuotaStore, clock: Clock, steps: list[Step]) -> list[object]:
    asks: dict[int, Ask] = {}
    outcomes: list[object] = []
    for i, step in enumerate(steps):
        if isinstance(step, Admit):
            asks[i] = Ask(step.client, step.limits, step.tokens)
            outcomes.append(rounded(await store.admit(asks[i])))
        elif isinstance(step, Settle):
            store.settle(asks[step.admitted], tokens_used=step.tokens_used, cost_usd=step.cost_usd)
            if isinstance(store, RedisQuotaStore):
                await store.drain()
        else:
            clock.now += step.seconds
    return outcomes


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with run_redis(tmp_path) as server:
        yield server


@pytest.mark.parametrize("name", SCENARIOS)
async def test_redis_answers_as_memory_does(redis: RedisServer, name: str) -> None:
    memory_clock, redis_clock = Clock(), Clock()  # 2026-12-31 23:59:30 UTC: day and month end in 30 s
    memory = MemoryQuotaStore(clock=memory_clock)
    shared = RedisQuotaStore(redis.url, timeout_s=TIMEOUT_S, when_unavailable="closed", clock=redis_clock)
    try:
        expected = await play(memory, memory_clock, SCENARIOS[name])
        got = await play(shared, redis_clock, SCENARIOS[name])
    finally:
        await shared.aclose()
    assert got == expected
    assert any(isinstance(o, Refused) for o in expected)  # each scenario reaches a limit


async def test_two_stores_on_one_redis_enforce_one_limit_atomically(redis: RedisServer) -> None:
    clock = Clock()
    stores = [RedisQuotaStore(redis.url, timeout_s=TIMEOUT_S, when_unavailable="closed", clock=clock) for _ in "ab"]
    try:
        limits = ClientLimits(requests_per_minute=20)
        outcomes = await asyncio.gather(*(stores[i % 2].admit(Ask("team", limits, 0)) for i in range(50)))
    finally:
        for store in stores:
            await store.aclose()
    assert sum(isinstance(o, Granted) for o in outcomes) == 20


async def test_a_month_budget_mid_month_resets_on_the_first(redis: RedisServer) -> None:
    clock = Clock()
    clock.now = datetime.datetime(2027, 2, 10, tzinfo=datetime.UTC).timestamp()
    store = RedisQuotaStore(redis.url, timeout_s=TIMEOUT_S, when_unavailable="closed", clock=clock)
    try:
        refused = await store.admit(Ask("a", ClientLimits(budget_usd_per_month=0.0), 0))
    finally:
        await store.aclose()
    assert refused == Refused("budget_usd_per_month", 0.0, 19 * 86400.0)


class Outcomes:
    """The store's observer, as the metrics are: what it was told, in order."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def limits_store_unavailable(self, outcome: Literal["served", "refused"]) -> None:
        self.outcomes.append(outcome)


async def unanswering_server() -> tuple[asyncio.Server, int]:
    """A TCP server that accepts and never answers: Redis hung, or a black-holed network."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "unanswered"])
async def test_fail_closed_refuses_with_limits_unavailable_within_the_timeout(kind: str) -> None:
    server, port = await unanswering_server()
    if kind == "refused":
        server.close()
        await server.wait_closed()
    store = RedisQuotaStore(f"redis://:hunter2@127.0.0.1:{port}/0", timeout_s=0.1, when_unavailable="closed")
    observer = Outcomes()
    store.observers.append(observer)
    try:
        with pytest.raises(LimitsUnavailable) as refused:
            await asyncio.wait_for(store.admit(Ask("a", RPM3, 0)), TIMEOUT_S)
    finally:
        await store.aclose()
        server.close()
    assert observer.outcomes == ["refused"]
    assert refused.value.metadata == {"backend": f"127.0.0.1:{port}"}
    assert "hunter2" not in str(refused.value)


async def test_fail_open_serves_unlimited_and_counts_it() -> None:
    server, port = await unanswering_server()
    store = RedisQuotaStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.1, when_unavailable="open")
    observer = Outcomes()
    store.observers.append(observer)
    try:
        ask = Ask("a", RPM3, 0)
        outcomes = [await asyncio.wait_for(store.admit(ask), TIMEOUT_S) for _ in range(5)]
        store.settle(ask, tokens_used=0, cost_usd=0.0)  # not counted, so nothing to give back
    finally:
        await store.aclose()
        server.close()
    assert outcomes == [Granted()] * 5
    assert store.served_unlimited == 5
    assert observer.outcomes == ["served"] * 5


async def test_the_settlement_writer_runs_in_no_calls_context(redis: RedisServer) -> None:
    """The writer task starts inside the first settling call, and then serves every call: its log lines
    (the store going down, coming back) must not carry that call's request id."""
    store = RedisQuotaStore(redis.url, timeout_s=TIMEOUT_S, when_unavailable="closed")
    request_ids: list[str] = []
    written = asyncio.Event()
    write = store._write

    async def recording(settlement: tuple[Ask, int, float]) -> None:
        request_ids.append(CURRENT_REQUEST_ID.get())
        await write(settlement)
        written.set()

    store._write = recording  # type: ignore[method-assign]
    try:
        ask = Ask("a", RPM3, 0)
        await asyncio.wait_for(store.admit(ask), TIMEOUT_S)
        token = CURRENT_REQUEST_ID.set("the-first-settling-call")
        try:
            store.settle(ask, tokens_used=1, cost_usd=0.0)
        finally:
            CURRENT_REQUEST_ID.reset(token)
        await asyncio.wait_for(written.wait(), TIMEOUT_S)
    finally:
        await store.aclose()
    assert request_ids == [""]
