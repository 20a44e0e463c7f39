"""The rate-limit trailers of an admitted call, named and written as OpenAI writes its headers:

    x-ratelimit-limit-requests: 60            x-ratelimit-limit-tokens: 150000
    x-ratelimit-remaining-requests: 59        x-ratelimit-remaining-tokens: 149984
    x-ratelimit-reset-requests: 1s            x-ratelimit-reset-tokens: 6m0s

"remaining" is what is left after this call; "reset" is how long until the limit is back to full, as a
Go duration (`1s`, `6m0s`, `17ms`, `1m30.5s`), rounded up to the millisecond. Only the limits the client
has are sent.
"""

from __future__ import annotations

import math

from server.config import ClientLimits
from server.policy.store import Granted

__all__ = ["go_duration", "rate_limit_trailers"]


def rate_limit_trailers(limits: ClientLimits, granted: Granted) -> tuple[tuple[str, str], ...]:
    requests: tuple[tuple[str, str], ...] = ()
    tokens: tuple[tuple[str, str], ...] = ()
    if limits.requests_per_minute is not None and granted.reset_requests_s is not None:
        requests = (
            ("x-ratelimit-limit-requests", str(limits.requests_per_minute)),
            ("x-ratelimit-remaining-requests", str(granted.remaining_requests)),
            ("x-ratelimit-reset-requests", go_duration(granted.reset_requests_s)),
        )
    if limits.tokens_per_minute is not None and granted.reset_tokens_s is not None:
        tokens = (
            ("x-ratelimit-limit-tokens", str(limits.tokens_per_minute)),
            ("x-ratelimit-remaining-tokens", str(granted.remaining_tokens)),
            ("x-ratelimit-reset-tokens", go_duration(granted.reset_tokens_s)),
        )
    return requests + tokens


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
