"""Where clients' counters live: the `QuotaStore` interface, and `MemoryQuotaStore`, the in-process one.

A store answers one question per call, atomically: may this client start one more call, estimated at
`tokens` tokens? Either every limit has room and all of them are taken together (a request, the tokens,
a concurrency slot), or nothing is taken and the answer names the first limit in the way and when it has
room again. After the call, `settle` corrects the tokens by what was really used, adds the call's cost
to the budgets and gives the concurrency slot back.

    limit                   kept as                          refused when                 room again
    requests_per_minute     a token bucket of that size,     fewer than 1 request left    when 1 is back
    tokens_per_minute       refilled evenly over a minute    fewer than the estimate      when it is back
    concurrent_streams      calls in flight                  at the limit                 (not known: 1 s)
    budget_usd_per_day      USD spent this UTC day           spent >= budget              at 00:00 UTC
    budget_usd_per_month    USD spent this UTC month         spent >= budget              on the 1st, 00:00 UTC

A request bigger than the whole tokens-per-minute limit is let through once the bucket is full (it could
never fit otherwise) and leaves it in debt; so does usage above the estimate. Budgets are checked before
a call and charged after it, so the calls in flight when a budget runs out may overshoot it.

A shared store (Redis) implements the same two methods: `admit` as one atomic script (check everything,
then take everything), `settle` queued and written from a task of its own, since the seam settles calls
synchronously and must never wait on the network.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from server.config import ClientLimits

__all__ = ["CONCURRENCY_RETRY_AFTER_S", "Ask", "Granted", "MemoryQuotaStore", "QuotaStore", "Refused"]

# A concurrency slot frees when some call ends, which no one can foresee: a client is told to try again
# after this long.
CONCURRENCY_RETRY_AFTER_S = 1.0
_MINUTE = 60.0
# Refills are float arithmetic on epoch seconds (~1e-7 s apart): a bucket waited for exactly may be a hair short.
_EPSILON = 1e-3


@dataclass(frozen=True, slots=True)
class Ask:
    """One call's claim: a request, `tokens` (estimated), a concurrency slot, room in the budgets."""

    client: str
    limits: ClientLimits
    tokens: int


@dataclass(frozen=True, slots=True)
class Granted:
    """Admitted: what is left after this call, and the seconds until each bucket is full again (None where
    the client has no such limit)."""

    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Not admitted: `limit` is the config name of the limit in the way, `value` its configured value."""

    limit: str
    value: float
    retry_after_s: float


class QuotaStore(Protocol):
    async def admit(self, ask: Ask) -> Granted | Refused:
        """Take everything `ask` claims, or nothing; atomically with respect to every other call."""

    def settle(self, ask: Ask, *, tokens_used: int, cost_usd: float) -> None:
        """The call admitted for `ask` has ended: it used `tokens_used` tokens and cost `cost_usd`. Give its
        concurrency slot back. Must not block (a networked store queues this)."""


class _Bucket:
    """A token bucket that fills at `size` per minute up to `size`; it may go below zero (a debt)."""

    __slots__ = ("at", "level")

    def __init__(self, size: float, now: float) -> None:
        self.level = size
        self.at = now

    def refill(self, size: float, now: float) -> float:
        if now > self.at:
            self.level = min(size, self.level + (now - self.at) * size / _MINUTE)
        self.at = now
        return self.level


class _Period:
    """Money spent in the current UTC day or month, and when that period ends."""

    __slots__ = ("ends", "monthly", "spent")

    def __init__(self, monthly: bool) -> None:
        self.monthly = monthly
        self.spent = 0.0
        self.ends = -math.inf

    def current(self, now: float) -> _Period:
        if now >= self.ends:
            self.spent, self.ends = 0.0, _period_end(now, monthly=self.monthly)
        return self


class _ClientState:
    __slots__ = ("day", "in_flight", "month", "requests", "tokens")

    def __init__(self, now: float) -> None:
        self.requests: _Bucket | None = None
        self.tokens: _Bucket | None = None
        self.in_flight = 0
        self.day = _Period(monthly=False)
        self.month = _Period(monthly=True)

    def bucket_of(self, kind: str, size: float, now: float) -> _Bucket:
        bucket: _Bucket | None = getattr(self, kind)
        if bucket is None:
            bucket = _Bucket(size, now)
            setattr(self, kind, bucket)
        return bucket


class MemoryQuotaStore:
    """Counters in this process: one gateway's view (README: Clients, limits and budgets). `clock` is wall
    time in seconds since the epoch (budgets reset at UTC midnight); tests pass their own."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._clients: dict[str, _ClientState] = {}  # configured names only (and "anonymous")

    async def admit(self, ask: Ask) -> Granted | Refused:
        return self.admit_now(ask)

    def admit_now(self, ask: Ask) -> Granted | Refused:
        """`admit` without the coroutine: the in-memory store never waits."""
        now = self._clock()
        state = self._clients.get(ask.client)
        if state is None:
            state = self._clients[ask.client] = _ClientState(now)
        limits = ask.limits
        refused = self._refusal(state, limits, ask.tokens, now)
        if refused is not None:
            return refused
        if limits.concurrent_streams is not None:
            state.in_flight += 1
        granted_requests = granted_tokens = None
        if limits.requests_per_minute is not None:
            bucket = state.bucket_of("requests", limits.requests_per_minute, now)
            bucket.level -= 1
            granted_requests = bucket
        if limits.tokens_per_minute is not None:
            bucket = state.bucket_of("tokens", limits.tokens_per_minute, now)
            bucket.level -= ask.tokens
            granted_tokens = bucket
        return Granted(
            *_left(granted_requests, limits.requests_per_minute), *_left(granted_tokens, limits.tokens_per_minute)
        )

    def _refusal(self, state: _ClientState, limits: ClientLimits, tokens: int, now: float) -> Refused | None:
        for period, budget, limit in (
            (state.day, limits.budget_usd_per_day, "budget_usd_per_day"),
            (state.month, limits.budget_usd_per_month, "budget_usd_per_month"),
        ):
            if budget is not None and period.current(now).spent >= budget:
                return Refused(limit, budget, period.ends - now)
        concurrent = limits.concurrent_streams
        if concurrent is not None and state.in_flight >= concurrent:
            return Refused("concurrent_streams", concurrent, CONCURRENCY_RETRY_AFTER_S)
        for kind, size, need in (
            ("requests", limits.requests_per_minute, 1),
            ("tokens", limits.tokens_per_minute, tokens),
        ):
            if size is None:
                continue
            level = state.bucket_of(kind, size, now).refill(size, now)
            wanted = min(need, size)  # a claim above the limit waits for a full bucket, then goes into debt
            if level < wanted - _EPSILON:
                return Refused(f"{kind}_per_minute", size, (wanted - level) * _MINUTE / size)
        return None

    def settle(self, ask: Ask, *, tokens_used: int, cost_usd: float) -> None:
        state = self._clients.get(ask.client)
        if state is None:
            return
        limits = ask.limits
        if limits.concurrent_streams is not None and state.in_flight > 0:
            state.in_flight -= 1
        if state.tokens is not None and tokens_used != ask.tokens and limits.tokens_per_minute is not None:
            state.tokens.level = min(limits.tokens_per_minute, state.tokens.level - (tokens_used - ask.tokens))
        if cost_usd:
            now = self._clock()
            state.day.current(now).spent += cost_usd
            state.month.current(now).spent += cost_usd

    def spent(self, client: str) -> tuple[float, float]:
        """USD `client` spent in this UTC day and month (for metrics and tests)."""
        state = self._clients.get(client)
        if state is None:
            return 0.0, 0.0
        now = self._clock()
        return state.day.current(now).spent, state.month.current(now).spent


def _left(bucket: _Bucket | None, size: int | None) -> tuple[int | None, float | None]:
    """What is left in `bucket` after a claim, and the seconds until it is full again."""
    if bucket is None or size is None:
        return None, None
    return max(math.floor(bucket.level), 0), (size - bucket.level) * _MINUTE / size


def _period_end(now: float, *, monthly: bool) -> float:
    """The end of the UTC day (or month) that `now` falls in, in seconds since the epoch."""
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    if monthly:
        end = datetime.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    else:
        end = today + datetime.timedelta(days=1)
    return datetime.datetime(end.year, end.month, end.day, tzinfo=datetime.UTC).timestamp()
