"""Retries before the first token: which failures to retry, how long to wait, and how many retries a provider may take.

    failure class   errors                                                       retried / fallen back
    RATE_LIMITED    UpstreamRateLimited (HTTP 429, in-band rate-limit events)    yes, Retry-After honoured up to a cap
    UNAVAILABLE     5xx, 408, refused, reset, cut, malformed, timeouts, idle     yes, full-jitter backoff
    FATAL           UpstreamRejected (the request is invalid), UpstreamFailed    no: the same request fails again
                    (401/403/404: the gateway's own configuration)

`RetryPolicy.wait_s` is the pause before the same deployment is tried again; switching to another
deployment or a fallback model needs none. `RetryBudget` is a token bucket per provider: every first
attempt earns `ratio` of a retry, every retry spends one, and the bucket holds at most `reserve`, so an
outage adds at most `ratio` (20 %) to the provider's load once the reserve is spent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from server import defaults
from server.errors import UpstreamError, UpstreamFailed, UpstreamRateLimited, UpstreamRejected

__all__ = ["FailureClass", "RetryBudget", "RetryPolicy", "classify"]


class FailureClass(enum.Enum):
    """What a failed attempt says about the next one. The values name the per-class fallback chains."""

    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    FATAL = "fatal"


def classify(error: UpstreamError) -> FailureClass:
    if isinstance(error, UpstreamRejected | UpstreamFailed):
        return FailureClass.FATAL
    if isinstance(error, UpstreamRateLimited):
        return FailureClass.RATE_LIMITED
    return FailureClass.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one call retries before its first token. Attempts are counted per model (see `defaults`)."""

    max_attempts: int = defaults.RETRY_MAX_ATTEMPTS
    backoff_base_s: float = defaults.RETRY_BACKOFF_BASE_S
    backoff_cap_s: float = defaults.RETRY_BACKOFF_CAP_S
    retry_after_cap_s: float = defaults.RETRY_AFTER_CAP_S
    budget_ratio: float = defaults.RETRY_BUDGET_RATIO
    budget_reserve: float = defaults.RETRY_BUDGET_RESERVE

    def backoff_s(self, failures: int, rng: Callable[[], float]) -> float:
        """Full jitter: a wait drawn from [0, min(cap, base * 2 ** (failures - 1))]."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** min(max(failures - 1, 0), 32))
        return rng() * ceiling

    def wait_s(self, error: UpstreamError, failures: int, rng: Callable[[], float]) -> float | None:
        """The pause before the deployment that raised `error` (its `failures`-th in this call) is tried
        again; None when it must not be tried again in this call (a Retry-After beyond the cap)."""
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= self.retry_after_cap_s else None
        return self.backoff_s(failures, rng)


class RetryBudget:
    """A token bucket that lets retries add at most `ratio` to a provider's first attempts.

    It starts full; it holds `reserve` retries (at least one, so that `reserve: 0` means "ratio only").
    """

    __slots__ = ("_balance", "_ratio", "_reserve")

    def __init__(self, ratio: float, reserve: float) -> None:
        self._ratio = ratio
        self._reserve = max(reserve, 1.0)
        self._balance = reserve

    def earn(self) -> None:
        """A first attempt was made."""
        self._balance = min(self._balance + self._ratio, self._reserve)

    def try_spend(self) -> bool:
        """Take one retry from the bucket, if it holds one."""
        if self._balance < 1:
            return False
        self._balance -= 1
        return True

    @property
    def balance(self) -> float:
        """The retries the bucket holds now (the metrics report it)."""
        return self._balance
