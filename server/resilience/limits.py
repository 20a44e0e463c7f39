"""Caps on upstream calls in flight, per process and per provider. They never queue: over a cap, an attempt is
refused at once (the router tries another provider, or answers RESOURCE_EXHAUSTED with RetryInfo). The
bounded, fair wait for a slot happens before, at the policy seam (server/policy/fair_queue.py), so the
process cap here only refuses when that queue lets more calls through than it (never, with the same limit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = ["Refusal", "UpstreamLimits"]

Refusal = Literal["process", "provider"]


class UpstreamLimits:
    """Counts upstream calls in flight. `try_acquire` takes a slot or says which cap refused it."""

    def __init__(self, process: int, per_provider: Mapping[str, int]) -> None:
        self.process_limit = process
        self.provider_limits = dict(per_provider)
        self.in_flight = 0
        self._per_provider: dict[str, int] = dict.fromkeys(per_provider, 0)

    def try_acquire(self, provider: str) -> Refusal | None:
        if self.in_flight >= self.process_limit:
            return "process"
        current = self._per_provider.get(provider, 0)
        limit = self.provider_limits.get(provider)
        if limit is not None and current >= limit:
            return "provider"
        self.in_flight += 1
        self._per_provider[provider] = current + 1
        return None

    def release(self, provider: str) -> None:
        self.in_flight -= 1
        self._per_provider[provider] -= 1
