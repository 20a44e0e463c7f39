"""`RedisQuotaStore`: clients' counters and budgets in Redis, so that every gateway instance on the same
Redis enforces one global limit (config `limits.backend: redis://HOST:PORT/DB`).

It keeps exactly what `MemoryQuotaStore` keeps (server/policy/store.py: token buckets, calls in flight,
money spent this UTC day and month), in one Redis hash per client, and changes it only inside Lua scripts,
which Redis runs atomically: `admit` checks every limit and takes everything or nothing in one round trip;
`settle` corrects the tokens, adds the cost and gives the concurrency slot back. Times come from the
gateway's clock (the same one the memory store uses), passed to the script.

The seam settles calls synchronously and must never wait on the network, so settlements are queued and
written by a task of their own (bounded: past `_SETTLE_QUEUE` waiting writes, the oldest is dropped and
counted). Every Redis call has a short timeout (`limits.backend_timeout_s`). When Redis cannot answer,
`limits.backend_unavailable` decides: `closed` refuses the call with UNAVAILABLE `LIMITS_UNAVAILABLE`;
`open` serves it unlimited, logs it (once per outage) and counts it: each call decided without the store
is told to the store's `observers` (the metrics, server/observe/metrics.py; the store knows nothing of
Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import LimitsUnavailable
from server.policy.store import CONCURRENCY_RETRY_AFTER_S, Ask, Granted, Refused, period_end

__all__ = ["RedisQuotaStore", "UnavailableObserver", "redis_address"]


class UnavailableObserver(Protocol):
    def limits_store_unavailable(self, outcome: Literal["served", "refused"]) -> None:
        """A call was decided without the store, which did not answer: `served` without limits (fail-open)
        or `refused` (fail-closed)."""


log = logging.getLogger(__name__)

_KEY_PREFIX = "holysheep:quota:"
_SETTLE_QUEUE = 10_000
_NONE = -1  # "no such limit" in the scripts' arguments

# KEYS[1] the client's hash. ARGV: now, rpm, tpm, concurrent, day budget, month budget, tokens, day end,
# month end. The same checks, in the same order, as MemoryQuotaStore.admit_now.
_ADMIT = """
local key = KEYS[1]
local now, rpm, tpm, concurrent = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local day_budget, month_budget, tokens = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local day_end, month_end = tonumber(ARGV[8]), tonumber(ARGV[9])
local s = redis.call('HMGET', key, 'rl', 'ra', 'tl', 'ta', 'fl', 'ds', 'de', 'ms', 'me')
local function num(v, default) if v then return tonumber(v) else return default end end
local req_level, req_at, tok_level, tok_at = num(s[1], nil), num(s[2], now), num(s[3], nil), num(s[4], now)
local in_flight, day_spent, day_ends = num(s[5], 0), num(s[6], 0), num(s[7], -1)
local month_spent, month_ends = num(s[8], 0), num(s[9], -1)
if now >= day_ends then day_spent, day_ends = 0, day_end end
if now >= month_ends then month_spent, month_ends = 0, month_end end
local function refill(level, at, size)
  if level == nil then return size end
  if now > at then level = level + (now - at) * size / 60 end
  if level > size then level = size end
  return level
end
local function keep()
  redis.call('HSET', key, 'ds', day_spent, 'de', day_ends, 'ms', month_spent, 'me', month_ends)
  redis.call('EXPIRE', key, 3000000)
end
if day_budget >= 0 and day_spent >= day_budget then
  keep() return {0, 'budget_usd_per_day', tostring(day_budget), tostring(day_ends - now)}
end
if month_budget >= 0 and month_spent >= month_budget then
  keep() return {0, 'budget_usd_per_month', tostring(month_budget), tostring(month_ends - now)}
end
if concurrent >= 0 and in_flight >= concurrent then
  keep() return {0, 'concurrent_streams', tostring(concurrent), 'concurrency'}
end
if rpm >= 0 then
  req_level = refill(req_level, req_at, rpm) req_at = now
  if req_level < 1 - 1e-3 then
    keep() redis.call('HSET', key, 'rl', req_level, 'ra', req_at)
    return {0, 'requests_per_minute', tostring(rpm), tostring((1 - req_level) * 60 / rpm)}
  end
end
if tpm >= 0 then
  tok_level = refill(tok_level, tok_at, tpm) tok_at = now
  local wanted = tokens
  if wanted > tpm then wanted = tpm end
  if tok_level < wanted - 1e-3 then
    keep() redis.call('HSET', key, 'tl', tok_level, 'ta', tok_at)
    if rpm >= 0 then redis.call('HSET', key, 'rl', req_level, 'ra', req_at) end
    return {0, 'tokens_per_minute', tostring(tpm), tostring((wanted - tok_level) * 60 / tpm)}
  end
end
if concurrent >= 0 then in_flight = in_flight + 1 end
local granted = {1, '', '', '', ''}
if rpm >= 0 then
  req_level = req_level - 1
  redis.call('HSET', key, 'rl', req_level, 'ra', req_at)
  granted[2], granted[3] = tostring(req_level), tostring(rpm)
end
if tpm >= 0 then
  tok_level = tok_level - tokens
  redis.call('HSET', key, 'tl', tok_level, 'ta', tok_at)
  granted[4], granted[5] = tostring(tok_level), tostring(tpm)
end
redis.call('HSET', key, 'fl', in_flight)
keep()
return granted
"""

# KEYS[1] the client's hash. ARGV: now, concurrent (or -1), tpm (or -1), tokens asked, tokens used, cost,
# day end, month end.
_SETTLE = """
local key = KEYS[1]
local now, concurrent, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local asked, used, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local day_end, month_end = tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('EXISTS', key) == 0 then return 0 end
if concurrent >= 0 then
  local in_flight = tonumber(redis.call('HGET', key, 'fl') or '0')
  if in_flight > 0 then redis.call('HSET', key, 'fl', in_flight - 1) end
end
if tpm >= 0 and used ~= asked then
  local level = tonumber(redis.call('HGET', key, 'tl') or tostring(tpm)) - (used - asked)
  if level > tpm then level = tpm end
  redis.call('HSET', key, 'tl', level)
end
if cost > 0 then
  local s = redis.call('HMGET', key, 'ds', 'de', 'ms', 'me')
  local day_spent, day_ends = tonumber(s[1] or '0'), tonumber(s[2] or '-1')
  local month_spent, month_ends = tonumber(s[3] or '0'), tonumber(s[4] or '-1')
  if now >= day_ends then day_spent, day_ends = 0, day_end end
  if now >= month_ends then month_spent, month_ends = 0, month_end end
  redis.call('HSET', key, 'ds', day_spent + cost, 'de', day_ends, 'ms', month_spent + cost, 'me', month_ends)
end
return 1
"""


def redis_address(url: str) -> str:
    """`host:port` (or the socket path) of a Redis URL, for logs: never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


class RedisQuotaStore:
    """Counters shared by every gateway on one Redis."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        when_unavailable: Literal["open", "closed"],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self._address = redis_address(url)
        self._timeout_s = timeout_s
        self._when_unavailable = when_unavailable
        self._clock = clock
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._uncounted: set[int] = set()  # asks let through unlimited while Redis was away (fail-open)
        self._pending: deque[tuple[Ask, int, float]] = deque()
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._down = False
        self.served_unlimited = 0  # calls let through while Redis was away (fail-open)
        self.refused_unavailable = 0  # calls refused while Redis was away (fail-closed)
        self.observers: list[UnavailableObserver] = []
        self.settlements_dropped = 0

    async def admit(self, ask: Ask) -> Granted | Refused:
        now = self._clock()
        limits = ask.limits
        args: list[Any] = [
            now,
            _or_none(limits.requests_per_minute),
            _or_none(limits.tokens_per_minute),
            _or_none(limits.concurrent_streams),
            _or_none(limits.budget_usd_per_day),
            _or_none(limits.budget_usd_per_month),
            ask.tokens,
            period_end(now, monthly=False),
            period_end(now, monthly=True),
        ]
        try:
            reply = await asyncio.wait_for(self._admit(keys=[_KEY_PREFIX + ask.client], args=args), self._timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            return self._unavailable(ask, exc)
        self._up()
        return _outcome(reply)

    def settle(self, ask: Ask, *, tokens_used: int, cost_usd: float) -> None:
        if id(ask) in self._uncounted:
            self._uncounted.discard(id(ask))
            return
        if len(self._pending) >= _SETTLE_QUEUE:
            self._pending.popleft()
            self.settlements_dropped += 1
        self._pending.append((ask, tokens_used, cost_usd))
        self._wake.set()
        if self._writer is None or self._writer.done():
            # A context of its own, not the settling call's: the writer serves every call after this one, so
            # its log lines (the store going down) must not carry this call's request id.
            self._writer = asyncio.get_running_loop().create_task(
                self._write_settlements(), name="quota settle", context=contextvars.Context()
            )

    async def drain(self) -> None:
        """Write every queued settlement (tests, and shutdown)."""
        while self._pending:
            await self._write_one()

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # what is left is lost, like a crash's
            await asyncio.wait_for(self.drain(), self._timeout_s * 4)
        if self._writer is not None:
            self._writer.cancel()
        await self._redis.aclose()

    async def _write_settlements(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                try:
                    await self._write_one()
                except (RedisError, OSError, TimeoutError) as exc:
                    self._went_down(exc)
                    break  # the next settlement tries again

    async def _write_one(self) -> None:
        async with self._writing:  # one settlement at a time, in order: the writer task's and drain()'s
            if self._pending:
                await self._write(self._pending[0])
                self._pending.popleft()  # only once written: a failed write is tried again

    async def _write(self, settlement: tuple[Ask, int, float]) -> None:
        ask, tokens_used, cost_usd = settlement
        now = self._clock()
        limits = ask.limits
        args: list[Any] = [
            now,
            _or_none(limits.concurrent_streams),
            _or_none(limits.tokens_per_minute),
            ask.tokens,
            tokens_used,
            cost_usd,
            period_end(now, monthly=False),
            period_end(now, monthly=True),
        ]
        await asyncio.wait_for(self._settle(keys=[_KEY_PREFIX + ask.client], args=args), self._timeout_s)

    def _unavailable(self, ask: Ask, exc: BaseException) -> Granted:
        self._went_down(exc)
        if self._when_unavailable == "closed":
            self.refused_unavailable += 1
            for observer in self.observers:
                observer.limits_store_unavailable("refused")
            raise LimitsUnavailable(
                "the gateway cannot reach its limits store, and refuses calls it cannot count; retry shortly",
                backend=self._address,
            )
        self.served_unlimited += 1
        for observer in self.observers:
            observer.limits_store_unavailable("served")
        self._uncounted.add(id(ask))
        return Granted()

    def _went_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            why = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)[:200]
            log.error(
                "limits store %s unavailable (%s): calls are %s until it answers",
                self._address,
                why,
                "refused (LIMITS_UNAVAILABLE)" if self._when_unavailable == "closed" else "served without limits",
            )

    def _up(self) -> None:
        if self._down:
            self._down = False
            log.info("limits store %s answers again", self._address)


def _or_none(value: float | None) -> float:
    return _NONE if value is None else value


def _outcome(reply: list[Any]) -> Granted | Refused:
    values = [v.decode() if isinstance(v, bytes) else v for v in reply]
    if values[0] == 0:
        _, limit, quota, retry = values
        retry_after_s = float(retry) if retry != "concurrency" else CONCURRENCY_RETRY_AFTER_S
        return Refused(limit, float(quota), retry_after_s)
    _, requests_left, rpm, tokens_left, tpm = values
    granted = Granted()
    if rpm:
        level, size = float(requests_left), float(rpm)
        granted.remaining_requests, granted.reset_requests_s = max(int(level), 0), (size - level) * 60 / size
    if tpm:
        level, size = float(tokens_left), float(tpm)
        granted.remaining_tokens, granted.reset_tokens_s = max(int(level), 0), (size - level) * 60 / size
    return granted
