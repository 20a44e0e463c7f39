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

__all__ = ["CONCURRENCY_RETRY_AFTER_S", "Ask", "Granted", "MemoryQuotaStore", "QuotaStore", "Refused", "period_end"]

# A concurrency slot frees when some call ends, which no one can foresee: a client is told to try again
# after this long.
CONCURRENCY_RETRY_AFTER_S = 1.0
_MINUTE = 60.0
# Refills are float arithmetic on epoch seconds (~1e-7 s apart): a bucket waited for exactly may be a hair short.
_EPSILON = 1e-3


@dataclass(slots=True)
class Ask:  # not frozen, nor Granted and Refused: made once per call, and a frozen init costs more
    """One call's claim: a request, `tokens` (estimated), a concurrency slot, room in the budgets."""

    client: str
    limits: ClientLimits
    tokens: int


@dataclass(slots=True)
class Granted:
    """Admitted: what is left after this call, and the seconds until each bucket is full again (None where
    the client has no such limit)."""

    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(slots=True)
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

    async def aclose(self) -> None:
        """Write what is queued, and let go of connections."""


class _Bucket:
    """A token bucket that fills at `size` per minute up to `size`; it may go below zero (a debt)."""

    __slots__ = ("at", "level")

    def __init__(self, size: float, now: float) -> None:
        self.level = size
        self.at = now

    def refill(self, size: float, now: float) -> float:
        level = self.level
        if now > self.at:
            level += (now - self.at) * size / _MINUTE
        self.level = level = level if level < size else size  # also a new (infinite) bucket's first size
        self.at = now
        return level


class _Period:
    """Money spent in the current UTC day or month, and when that period ends."""

    __slots__ = ("ends", "monthly", "spent")

    def __init__(self, monthly: bool) -> None:
        self.monthly = monthly
        self.spent = 0.0
        self.ends = -math.inf

    def current(self, now: float) -> _Period:
        if now >= self.ends:
            self.spent, self.ends = 0.0, period_end(now, monthly=self.monthly)
        return self


class _ClientState:
    __slots__ = ("day", "in_flight", "month", "requests", "tokens")

    def __init__(self, now: float) -> None:
        # Full buckets from the start; a limit the client does not have leaves its bucket unused.
        self.requests = _Bucket(math.inf, now)
        self.tokens = _Bucket(math.inf, now)
        self.in_flight = 0
        self.day = _Period(monthly=False)
        self.month = _Period(monthly=True)


class MemoryQuotaStore:
    """Counters in this process: one gateway's view (README: Clients, limits and budgets). `clock` is wall
    time in seconds since the epoch (budgets reset at UTC midnight); tests pass their own."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._clients: dict[str, _ClientState] = {}  # configured names only (and "anonymous")

    async def admit(self, ask: Ask) -> Granted | Refused:
        return self.admit_now(ask)

    def admit_now(self, ask: Ask) -> Granted | Refused:
        """`admit` without the coroutine: the in-memory store never waits. Straight-line code: it runs
        once per call of every limited client (bench/limiter.py measures it)."""
        now = self._clock()
        state = self._clients.get(ask.client)
        if state is None:
            state = self._clients[ask.client] = _ClientState(now)
        limits = ask.limits
        # Check everything first ...
        day, month = limits.budget_usd_per_day, limits.budget_usd_per_month
        if day is not None and state.day.current(now).spent >= day:
            return Refused("budget_usd_per_day", day, state.day.ends - now)
        if month is not None and state.month.current(now).spent >= month:
            return Refused("budget_usd_per_month", month, state.month.ends - now)
        concurrent = limits.concurrent_streams
        if concurrent is not None and state.in_flight >= concurrent:
            return Refused("concurrent_streams", concurrent, CONCURRENCY_RETRY_AFTER_S)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm is not None and (level := state.requests.refill(rpm, now)) < 1 - _EPSILON:
            return Refused("requests_per_minute", rpm, (1 - level) * _MINUTE / rpm)
        if tpm is not None:
            wanted = ask.tokens if ask.tokens < tpm else tpm  # a bigger claim waits for a full bucket
            if (level := state.tokens.refill(tpm, now)) < wanted - _EPSILON:
                return Refused("tokens_per_minute", tpm, (wanted - level) * _MINUTE / tpm)
        # ... then take everything.
        if concurrent is not None:
            state.in_flight += 1
        remaining_requests = reset_requests = remaining_tokens = reset_tokens = None
        if rpm is not None:
            state.requests.level -= 1
            remaining_requests, reset_requests = _left(state.requests.level, rpm)
        if tpm is not None:
            state.tokens.level -= ask.tokens
            remaining_tokens, reset_tokens = _left(state.tokens.level, tpm)
        return Granted(remaining_requests, reset_requests, remaining_tokens, reset_tokens)

    def settle(self, ask: Ask, *, tokens_used: int, cost_usd: float) -> None:
        state = self._clients.get(ask.client)
        if state is None:
            return
        limits = ask.limits
        if limits.concurrent_streams is not None and state.in_flight > 0:
            state.in_flight -= 1
        tpm = limits.tokens_per_minute
        if tpm is not None and tokens_used != ask.tokens:
            level = state.tokens.level - (tokens_used - ask.tokens)
            state.tokens.level = level if level < tpm else tpm
        if cost_usd:
            now = self._clock()
            state.day.current(now).spent += cost_usd
            state.month.current(now).spent += cost_usd

    async def aclose(self) -> None:
        """Nothing to close: the counters are this process's memory."""

    def spent(self, client: str) -> tuple[float, float]:
        """USD `client` spent in this UTC day and month (for metrics and tests)."""
        state = self._clients.get(client)
        if state is None:
            return 0.0, 0.0
        now = self._clock()
        return state.day.current(now).spent, state.month.current(now).spent


def _left(level: float, size: int) -> tuple[int, float]:
    """What is left at `level` after a claim, and the seconds until the bucket is full again."""
    return (int(level) if level > 0 else 0), (size - level) * _MINUTE / size


def period_end(now: float, *, monthly: bool) -> float:
    """The end of the UTC day (or month) that `now` falls in, in seconds since the epoch."""
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    if monthly:
        end = datetime.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    else:
        end = today + datetime.timedelta(days=1)
    return datetime.datetime(end.year, end.month, end.day, tzinfo=datetime.UTC).timestamp()
