"""When the supervisor replaces a dead worker, when it gives up, and how a worker's end is said in its log."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from server import defaults

__all__ = ["RestartPolicy", "describe_exit"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a dead worker is replaced, and when the supervisor gives up.

    A worker that dies before it is ready, or within `stable_s` of being ready, died quickly, and its
    slot's deaths in a row go on counting; one that served longer starts the count again at 1. After
    death n the replacement waits 0 s (n = 1), then `base_s`, 2 x `base_s` ... up to `cap_s`; after
    `max_quick_restarts` + 1 deaths in a row the supervisor gives up and stops the gateway, so that a
    worker that cannot start does not spin forever and whatever runs the gateway sees it fail.
    """

    stable_s: float = defaults.WORKER_STABLE_S
    base_s: float = defaults.WORKER_RESTART_BACKOFF_BASE_S
    cap_s: float = defaults.WORKER_RESTART_BACKOFF_CAP_S
    max_quick_restarts: int = defaults.WORKER_MAX_QUICK_RESTARTS

    def deaths(self, before: int, ready_for_s: float | None) -> int:
        """A slot's deaths in a row, now that its worker died after being ready `ready_for_s` (None: never)."""
        quick = ready_for_s is None or ready_for_s < self.stable_s
        return before + 1 if quick else 1

    def delay_s(self, deaths: int) -> float | None:
        """How long to wait before replacing a worker after `deaths` in a row; None: give up."""
        if deaths > self.max_quick_restarts:
            return None
        if deaths <= 1:
            return 0.0
        return float(min(self.cap_s, self.base_s * 2 ** (deaths - 2)))


def describe_exit(exitcode: int | None) -> str:
    """`exited with code 1`, `was killed by SIGKILL`, as a log line says it."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
