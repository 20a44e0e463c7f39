"""A provider's API keys used in turn, with the ones the upstream refused set aside.

A provider configured with several key variables (`api_key_env: [A, B, C]`) spreads its calls over them
round robin. A key answered 401/403 (or Google's API_KEY_INVALID) is set aside until the gateway restarts,
and the same call goes on at once with the next key; a key answered 429 rests for the upstream's
Retry-After while the others carry on. Only when no key is left does the call fail, with the upstream's own
error, so that routing falls back elsewhere as for any other upstream failure. Keys are named in logs by
their variable, never by value.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from server import defaults
from server.config import ApiKey
from server.errors import UpstreamRateLimited

__all__ = ["KeyPool"]

log = logging.getLogger("gateway.upstream")


class KeyPool:
    """Several keys of one provider; `take` gives the next usable one for an attempt."""

    def __init__(self, provider: str, keys: Sequence[ApiKey], *, clock: Callable[[], float] = time.monotonic) -> None:
        if len(keys) < 2:
            raise ValueError("a key pool holds at least two keys")
        self._provider = provider
        self._keys = tuple(keys)
        self._clock = clock
        self._turn = 0
        self._set_aside: set[str] = set()
        self._resting_until: dict[str, float] = {}  # bounded: one entry per configured key

    @property
    def usable(self) -> int:
        """How many keys are neither set aside nor resting now."""
        now = self._clock()
        return sum(1 for key in self._keys if self._is_usable(key, now))

    def take(self, tried: set[str]) -> ApiKey | None:
        """The next key in turn that this attempt has not `tried` and that is usable (added to `tried`).

        None when the attempt has tried every usable key: the caller then reports the last key's error. An
        attempt that finds every key resting fails at once with UpstreamRateLimited until the first one
        wakes; one that finds every key set aside tries them anyway, so that the upstream's own answer, not
        the gateway's memory of it, is what the client sees.
        """
        now = self._clock()
        count = len(self._keys)
        for _ in range(count):
            key = self._keys[self._turn % count]
            self._turn += 1
            if key.env not in tried and self._is_usable(key, now):
                tried.add(key.env)
                return key
        if tried:
            return None
        waking = [until for env, until in self._resting_until.items() if until > now and env not in self._set_aside]
        if waking:
            raise UpstreamRateLimited(
                f"upstream {self._provider} is rate limiting every key of the gateway (HTTP 429)",
                provider=self._provider,
                retry_after_s=min(waking) - now,
                metadata={"keys_resting": str(len(waking))},
            )
        key = self._keys[self._turn % count]
        self._turn += 1
        tried.add(key.env)
        return key

    def set_aside(self, key: ApiKey, http_status: int | None) -> None:
        if key.env in self._set_aside:
            return
        self._set_aside.add(key.env)
        log.warning(
            "upstream %s rejected the key in %s (HTTP %s): set aside until the gateway restarts; %d of %d keys usable",
            self._provider,
            key.env,
            http_status,
            self.usable,
            len(self._keys),
        )

    def rest(self, key: ApiKey, retry_after_s: float | None) -> None:
        """Leave `key` out until the upstream's Retry-After has passed (a default when it gave none)."""
        delay = defaults.KEY_REST_S if retry_after_s is None or not math.isfinite(retry_after_s) else retry_after_s
        delay = min(max(delay, 0.0), defaults.KEY_REST_MAX_S)
        self._resting_until[key.env] = self._clock() + delay
        log.info("upstream %s rate limited the key in %s: it rests %.1f s", self._provider, key.env, delay)

    def _is_usable(self, key: ApiKey, now: float) -> bool:
        return key.env not in self._set_aside and self._resting_until.get(key.env, 0.0) <= now
