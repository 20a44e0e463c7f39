"""The stream idle timeout after the first token, at no per-token cost beyond counting.

The stream's loop adds one to `count` per event. A timer looks every quarter timeout: when the count has
not moved for a whole timeout while the loop waits on the upstream, the watch cancels the task, and the
loop tells that cancellation from any other by `expired`. Time the client takes to accept what it got
(the loop is then parked at its `yield`, and the upstream generator at its own) never counts as silence.
A stalled stream is therefore ended between 1 and 1.25 timeouts after its last event.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["IdleWatch"]

_CHECKS_PER_TIMEOUT = 4


class IdleWatch:
    __slots__ = ("_events", "_handle", "_last_change", "_loop", "_seen", "_task", "count", "expired", "timeout_s")

    def __init__(self, timeout_s: float, events: Any) -> None:
        """`events` is the upstream async generator the loop iterates (it tells waiting from parked)."""
        self.timeout_s = timeout_s
        self.count = 0
        self.expired = False
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._seen = 0
        self._last_change = self._loop.time()
        self._handle = self._loop.call_later(timeout_s / _CHECKS_PER_TIMEOUT, self._check)

    def stop(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        # ag_await is None while the upstream generator is parked at a yield: the client is being served.
        if self.count != self._seen or getattr(self._events, "ag_await", True) is None:
            self._seen = self.count
            self._last_change = now
        elif now - self._last_change >= self.timeout_s * 0.99 and self._task is not None:  # timers drift a little
            self.expired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_later(self.timeout_s / _CHECKS_PER_TIMEOUT, self._check)
