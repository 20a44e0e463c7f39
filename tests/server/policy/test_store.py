"""MemoryQuotaStore: token buckets, concurrency and budgets on a clock the test moves."""

from __future__ import annotations

import datetime
from dataclasses import replace

from server.config import ClientLimits
from server.policy.store import Ask, Granted, MemoryQuotaStore, Refused

NOW = datetime.datetime(2026, 12, 31, 23, 59, 30, tzinfo=datetime.UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def rounded(outcome: Granted | Refused) -> Granted | Refused:
    """`outcome` with its seconds rounded to the microsecond (refills are float arithmetic)."""
    if isinstance(outcome, Refused):
        return replace(outcome, retry_after_s=round(outcome.retry_after_s, 6))
    reset_requests, reset_tokens = outcome.reset_requests_s, outcome.reset_tokens_s
    return replace(
        outcome,
        reset_requests_s=None if reset_requests is None else round(reset_requests, 6),
        reset_tokens_s=None if reset_tokens is None else round(reset_tokens, 6),
    )


def store_and_clock() -> tuple[MemoryQuotaStore, Clock]:
    clock = Clock()
    return MemoryQuotaStore(clock=clock), clock


def test_requests_per_minute_refill_evenly() -> None:
    store, clock = store_and_clock()
    ask = Ask("a", ClientLimits(requests_per_minute=3), 0)

    outcomes = [store.admit_now(ask) for _ in range(4)]

    assert outcomes[:3] == [
        Granted(remaining_requests=2, reset_requests_s=20.0),
        Granted(remaining_requests=1, reset_requests_s=40.0),
        Granted(remaining_requests=0, reset_requests_s=60.0),
    ]
    assert outcomes[3] == Refused("requests_per_minute", 3, 20.0)
    clock.now += 19.9
    assert isinstance(store.admit_now(ask), Refused)
    clock.now += 0.1
    assert isinstance(store.admit_now(ask), Granted)


def test_a_refused_call_takes_nothing() -> None:
    store, _ = store_and_clock()
    limits = ClientLimits(requests_per_minute=10, tokens_per_minute=100, concurrent_streams=5)

    assert isinstance(store.admit_now(Ask("a", limits, 90)), Granted)
    assert rounded(store.admit_now(Ask("a", limits, 20))) == Refused("tokens_per_minute", 100, 6.0)
    granted = rounded(store.admit_now(Ask("a", limits, 10)))

    assert granted == Granted(9 - 1, 12.0, 0, 60.0)


def test_tokens_are_corrected_after_the_call_and_may_leave_a_debt() -> None:
    store, clock = store_and_clock()
    ask = Ask("a", ClientLimits(tokens_per_minute=100), 50)

    store.admit_now(ask)
    store.settle(ask, tokens_used=150, cost_usd=0.0)  # 100 more than estimated: 50 - 100 = -50

    assert rounded(store.admit_now(Ask("a", ask.limits, 10))) == Refused("tokens_per_minute", 100, 36.0)
    clock.now += 36
    assert isinstance(store.admit_now(Ask("a", ask.limits, 10)), Granted)


def test_a_claim_above_the_whole_limit_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    store, clock = store_and_clock()
    limits = ClientLimits(tokens_per_minute=100)

    assert rounded(store.admit_now(Ask("a", limits, 250))) == Granted(remaining_tokens=0, reset_tokens_s=150.0)
    assert rounded(store.admit_now(Ask("a", limits, 250))) == Refused("tokens_per_minute", 100, 150.0)
    clock.now += 150
    assert isinstance(store.admit_now(Ask("a", limits, 250)), Granted)


def test_concurrency_slots_come_back_when_calls_settle() -> None:
    store, _ = store_and_clock()
    ask = Ask("a", ClientLimits(concurrent_streams=2), 0)

    assert [type(store.admit_now(ask)) for _ in range(3)] == [Granted, Granted, Refused]
    assert store.admit_now(ask) == Refused("concurrent_streams", 2, 1.0)
    store.settle(ask, tokens_used=0, cost_usd=0.0)
    assert isinstance(store.admit_now(ask), Granted)


def test_budgets_reset_at_the_end_of_the_utc_day_and_month() -> None:
    store, clock = store_and_clock()  # 2026-12-31 23:59:30 UTC: both periods end in 30 s
    day = Ask("a", ClientLimits(budget_usd_per_day=1.0), 0)
    month = Ask("b", ClientLimits(budget_usd_per_month=1.0), 0)

    for ask in (day, month):
        store.admit_now(ask)
        store.settle(ask, tokens_used=0, cost_usd=1.5)

    assert store.admit_now(day) == Refused("budget_usd_per_day", 1.0, 30.0)
    assert store.admit_now(month) == Refused("budget_usd_per_month", 1.0, 30.0)
    assert store.spent("a") == (1.5, 1.5)
    clock.now += 30
    assert isinstance(store.admit_now(day), Granted)
    assert isinstance(store.admit_now(month), Granted)
    assert store.spent("a") == (0.0, 0.0)


def test_a_month_budget_mid_month_resets_on_the_first() -> None:
    clock = Clock()
    clock.now = datetime.datetime(2027, 2, 10, tzinfo=datetime.UTC).timestamp()
    store = MemoryQuotaStore(clock=clock)
    ask = Ask("a", ClientLimits(budget_usd_per_month=0.0), 0)

    assert store.admit_now(ask) == Refused("budget_usd_per_month", 0.0, 19 * 86400.0)


def test_clients_have_their_own_counters() -> None:
    store, _ = store_and_clock()
    limits = ClientLimits(requests_per_minute=1)

    assert isinstance(store.admit_now(Ask("a", limits, 0)), Granted)
    assert isinstance(store.admit_now(Ask("b", limits, 0)), Granted)
    assert isinstance(store.admit_now(Ask("a", limits, 0)), Refused)


async def test_admit_is_the_same_as_a_coroutine() -> None:
    store, _ = store_and_clock()
    assert await store.admit(Ask("a", ClientLimits(requests_per_minute=1), 0)) == Granted(0, 60.0)
