"""The rate-limit trailers of an admitted call, named and written as OpenAI writes its headers:

    x-ratelimit-limit-requests: 60            x-ratelimit-limit-tokens: 150000
    x-ratelimit-remaining-requests: 59        x-ratelimit-remaining-tokens: 149984
    x-ratelimit-reset-requests: 1s            x-ratelimit-reset-tokens: 6m0s

"remaining" is what is left after this call; "reset" is how long until the limit is back to full, as a
Go duration (`1s`, `6m0s`, `17ms`, `1m30.5s`), rounded up to the millisecond. Only the limits the client
has are sent.

An InteractiveStream turn has no trailers of its own: it carries the same values, as a `RateLimitsLeft`,
in its TurnDone or TurnError (`rate_limits`, see server/interactive/wire.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.config import ClientLimits
from server.policy.store import Granted

__all__ = ["RateLimitWindow", "RateLimitsLeft", "go_duration", "rate_limit_trailers", "rate_limits_left"]


@dataclass(frozen=True, slots=True)
class RateLimitWindow:
    """One limit of an admitted call: its configured value, what is left after the call, and the seconds
    until it is full again."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class RateLimitsLeft:
    """What is left of a client's limits after an admitted call; None for a limit the client does not have."""

    requests: RateLimitWindow | None = None
    tokens: RateLimitWindow | None = None

    def trailers(self) -> tuple[tuple[str, str], ...]:
        out: tuple[tuple[str, str], ...] = ()
        for name, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                out += (
                    (f"x-ratelimit-limit-{name}", str(window.limit)),
                    (f"x-ratelimit-remaining-{name}", str(window.remaining)),
                    (f"x-ratelimit-reset-{name}", go_duration(window.reset_s)),
                )
        return out


def rate_limits_left(limits: ClientLimits, granted: Granted) -> RateLimitsLeft | None:
    """What `granted` leaves of `limits`, or None when the client has neither rate limit."""
    requests = tokens = None
    if (
        limits.requests_per_minute is not None
        and granted.reset_requests_s is not None
        and granted.remaining_requests is not None
    ):
        requests = RateLimitWindow(limits.requests_per_minute, granted.remaining_requests, granted.reset_requests_s)
    if (
        limits.tokens_per_minute is not None
        and granted.reset_tokens_s is not None
        and granted.remaining_tokens is not None
    ):
        tokens = RateLimitWindow(limits.tokens_per_minute, granted.remaining_tokens, granted.reset_tokens_s)
    if requests is None and tokens is None:
        return None
    return RateLimitsLeft(requests, tokens)


def rate_limit_trailers(limits: ClientLimits, granted: Granted) -> tuple[tuple[str, str], ...]:
    left = rate_limits_left(limits, granted)
    return left.trailers() if left is not None else ()


def go_duration(seconds: float) -> str:
    """`seconds` as Go's time.Duration prints it, to the millisecond (rounded up): 0s, 17ms, 1s, 6m0s, 1h0m0s."""
    ms = max(math.ceil(seconds * 1000 - 1e-6), 0)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    text += "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
