"""What a call plan tells whoever watches it (the metrics): each attempt's end and outcome, each retry and
each fallback taken. The plan calls these once per attempt, never per token; the default watches nothing.

    outcome         the attempt ended ...
    ok              after it served (its first token, or the whole reply)
    rate_limited    failing before its first token, of that failure class (server/resilience/retry.py)
    unavailable
    fatal
    failed_mid_stream   after its first token, cut off
    cancelled       without a verdict (the client went away, or the call was refused before it)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from server.routing.catalog import ModelConfig
    from server.types import Served

__all__ = ["NO_OBSERVER", "PlanObserver"]


class PlanObserver(Protocol):
    def attempt_ended(self, served: Served, outcome: str) -> None:
        """An upstream attempt of `served` (its model, provider and deployment) ended with `outcome`."""

    def retried(self, served: Served) -> None:
        """An attempt that is not the first on its model starts (another try of a deployment, or another
        deployment of the same model)."""

    def fell_back(self, origin: ModelConfig, served: Served, failure_class: str) -> None:
        """The first attempt on a fallback model of `origin` starts, after a failure of `failure_class`."""


class _NoObserver:
    def attempt_ended(self, served: Served, outcome: str) -> None:
        pass

    def retried(self, served: Served) -> None:
        pass

    def fell_back(self, origin: ModelConfig, served: Served, failure_class: str) -> None:
        pass


NO_OBSERVER: PlanObserver = _NoObserver()
