"""A circuit breaker per deployment: stop sending calls to an upstream that keeps failing, then probe it.

    CLOSED ──(N failed calls in a row, or failure ratio > R over >= M calls in the window)──> OPEN
    OPEN ──(cooldown passed; one call is let through as a probe)──> HALF_OPEN
    HALF_OPEN ──(probe succeeded)──> CLOSED        HALF_OPEN ──(probe failed)──> OPEN

`allow()` admits a call (or refuses it: the router then fails fast to the next deployment or fallback);
the caller reports the outcome of every admitted call with `record(admission, ok)`, or `release(admission)`
when the call ended without a verdict (cancelled by its client, or refused for a client error). While
OPEN or HALF_OPEN only the probe's verdict counts. A probe that gives no verdict within a cooldown is
presumed lost, and the next call becomes the probe.

The breaker counts client calls, not upstream attempts: a call that retried the same deployment three
times reports one failure (server/routing/plan.py sees to it), so opening takes N failing calls, and the
calls before the one that opened it each report the upstream's real error. A failure may come with a note
(the error's message and metadata), kept as `last_failure` for the calls the open breaker turns away.

`on_change` hears every change of state, as it happens (the per-model health, server/observe/model_health.py,
listens): nothing polls a breaker.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from server import defaults
from server.observe.record import log_value

__all__ = ["Admission", "BreakerPolicy", "BreakerState", "CircuitBreaker"]

log = logging.getLogger(__name__)

# The window is kept as this many buckets, so old outcomes leave it in steps of window_s / _BUCKETS.
_BUCKETS = 10


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(enum.Enum):
    DENIED = 0
    ADMITTED = 1
    PROBE = 2


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment's breaker opens, and how long it stays open. `enabled: false` never opens it."""

    enabled: bool = True
    consecutive_failures: int = defaults.BREAKER_CONSECUTIVE_FAILURES
    failure_ratio: float = defaults.BREAKER_FAILURE_RATIO
    min_requests: int = defaults.BREAKER_MIN_REQUESTS
    window_s: float = defaults.BREAKER_WINDOW_S
    cooldown_s: float = defaults.BREAKER_COOLDOWN_S


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        clock: Callable[[], float],
        on_change: Callable[[CircuitBreaker], None] | None = None,
    ) -> None:
        self.name = name
        self._logged_as = log_value(name)  # a pass-through name is the client's choice
        self._on_change = on_change
        self._policy = policy
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        # [bucket start, successes, failures], oldest first.
        self._buckets: deque[list[float]] = deque()
        self._opened_at = 0.0
        self._probe_started: float | None = None
        # (message, metadata) of the last failure counted, if the caller said what it was.
        self.last_failure: tuple[str, Mapping[str, str]] | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> Admission:
        if self._state is BreakerState.CLOSED:
            return Admission.ADMITTED
        now = self._clock()
        if self._state is BreakerState.OPEN:
            if now < self._opened_at + self._policy.cooldown_s:
                return Admission.DENIED
            self._state = BreakerState.HALF_OPEN
            log.info("circuit of %s half-open: letting a probe through", self._logged_as)
            self._changed()
        elif self._probe_started is not None and now < self._probe_started + self._policy.cooldown_s:
            return Admission.DENIED  # a probe is in flight
        self._probe_started = now
        return Admission.PROBE

    def record(self, admission: Admission, ok: bool, failure: tuple[str, Mapping[str, str]] | None = None) -> None:
        """The outcome of an admitted call: `ok` when the upstream served (its first token arrived); for a
        failure, optionally what it was (message, metadata)."""
        if not ok and failure is not None:
            self.last_failure = failure
        if admission is Admission.PROBE:
            self._probe_started = None
            if self._state is BreakerState.HALF_OPEN:
                if ok:
                    self._close()
                else:
                    self._open("its probe failed")
            return
        if self._state is not BreakerState.CLOSED or admission is Admission.DENIED:
            return  # decided by the probe alone
        bucket = self._bucket()
        if ok:
            bucket[1] += 1
            self._consecutive = 0
            return
        bucket[2] += 1
        self._consecutive += 1
        self._maybe_open()

    def release(self, admission: Admission) -> None:
        """An admitted call ended without a verdict; a probe slot is freed for the next call."""
        if admission is Admission.PROBE:
            self._probe_started = None

    def probe_in_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when closed, or when it would now)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        return max(self._opened_at + self._policy.cooldown_s - self._clock(), 0.0)

    def _maybe_open(self) -> None:
        policy = self._policy
        if not policy.enabled:
            return
        if self._consecutive >= policy.consecutive_failures:
            self._open(f"{self._consecutive} failed calls in a row")
            return
        successes = sum(b[1] for b in self._buckets)
        failures = sum(b[2] for b in self._buckets)
        total = successes + failures
        if total >= policy.min_requests and failures / total > policy.failure_ratio:
            self._open(f"{failures:.0f} of {total:.0f} calls failed in {policy.window_s:g} s")

    def _open(self, why: str) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probe_started = None
        last = f" (last: {self.last_failure[0]})" if self.last_failure else ""
        log.warning(
            "circuit of %s opened: %s%s; calls go elsewhere for %g s",
            self._logged_as,
            why,
            last,
            self._policy.cooldown_s,
        )
        self._changed()

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._buckets.clear()
        log.info("circuit of %s closed: its probe succeeded", self._logged_as)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    def _bucket(self) -> list[float]:
        """The current bucket of the window; buckets older than the window are dropped."""
        now = self._clock()
        width = self._policy.window_s / _BUCKETS
        buckets = self._buckets
        while buckets and buckets[0][0] <= now - self._policy.window_s:
            buckets.popleft()
        if not buckets or now >= buckets[-1][0] + width:
            buckets.append([now, 0, 0])
        return buckets[-1]
