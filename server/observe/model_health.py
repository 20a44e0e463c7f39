"""Health per model: `holysheepai.AIService/<model>` is NOT_SERVING while every deployment the model's calls
could go to (its own and its fallbacks') has an open circuit, so a load balancer or a client can steer
away before calling; SERVING otherwise.

    breaker state change ──► the models that use its deployment ──► each one's status ──► HealthService.set
    (a callback, server/resilience/breaker.py)                        (no change: nothing is sent)

A circuit counts as open from the moment it opens until its cooldown ends: a call then would be let
through as its probe, so the model is SERVING again (and NOT_SERVING once more if the probe fails). The end
of a cooldown changes no breaker by itself, so a timer (one per open breaker, `call_later`) looks again
then. Nothing runs per call: only state changes and those timers.

The names are the catalog's: every model and alias (`catalog.known_names`), fixed when the gateway starts.
A "provider/anything" pass-through name is not one, so health never stores a name a client chose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from server.observe.health import NOT_SERVING, SERVING, HealthService
from server.resilience.breaker import BreakerState, CircuitBreaker
from server.routing.catalog import Catalog, ModelConfig
from server.routing.plan import Resilience

__all__ = ["ModelHealth", "model_service"]

SERVICE_PREFIX = "holysheepai.AIService/"


class Cancellable(Protocol):
    def cancel(self) -> None: ...


Scheduler = Callable[[float, Callable[[], None]], Cancellable]


def model_service(name: str) -> str:
    """The health service name of catalog model (or alias) `name`."""
    return SERVICE_PREFIX + name


def _loop_call_later(delay_s: float, callback: Callable[[], None]) -> Cancellable:
    return asyncio.get_running_loop().call_later(delay_s, callback)


class ModelHealth:
    """Keeps each catalog name's health status true to its deployments' breakers.

    `call_later(delay_s, callback)` schedules the look at the end of a cooldown (the event loop's by
    default; a unit test passes its own, with the breakers' clock).
    """

    def __init__(self, catalog: Catalog, health: HealthService, *, call_later: Scheduler = _loop_call_later) -> None:
        self._health = health
        self._call_later = call_later
        # For each model or alias: the breaker names ("provider/upstream_model") its calls could go to.
        self._upstreams: dict[str, frozenset[str]] = {}
        # For each breaker name: the models and aliases that depend on it.
        self._dependents: dict[str, list[str]] = {}
        for name in catalog.known_names:
            model = catalog.resolve(name)
            if model is None:
                continue
            upstreams = frozenset(_upstreams(model, catalog))
            self._upstreams[name] = upstreams
            for upstream in upstreams:
                self._dependents.setdefault(upstream, []).append(name)
        self._breakers: dict[str, CircuitBreaker] = {}  # those that changed state at least once
        self._timers: dict[str, Cancellable] = {}

    @property
    def services(self) -> list[str]:
        return [model_service(name) for name in self._upstreams]

    def start(self, resilience: Resilience) -> None:
        """Every model SERVING, then follow `resilience`'s breakers."""
        for name in self._upstreams:
            self._health.set(model_service(name), SERVING)
        resilience.watch_breakers(self.breaker_changed)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def breaker_changed(self, breaker: CircuitBreaker) -> None:
        name = breaker.name
        dependents = self._dependents.get(name)
        if dependents is None:  # a pass-through deployment no catalog name uses
            return
        self._breakers[name] = breaker
        # Whether it turns calls away is read once: read again after the update, a cooldown that ended in
        # between would leave the names NOT_SERVING with no timer left to look again.
        blocked = _blocked(breaker)
        self._update(dependents, blocked={name: blocked})
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if blocked:
            self._timers[name] = self._call_later(breaker.probe_in_s(), lambda: self._cooldown_over(breaker))

    def _cooldown_over(self, breaker: CircuitBreaker) -> None:
        self._timers.pop(breaker.name, None)
        self.breaker_changed(breaker)  # still blocked (a timer may fire a hair early): it sets another

    def _update(self, names: Iterable[str], blocked: Mapping[str, bool]) -> None:
        """Each name's status; `blocked` holds the breakers already read."""
        for name in names:
            every = all(self._is_blocked(upstream, blocked) for upstream in self._upstreams[name])
            self._health.set(model_service(name), NOT_SERVING if every else SERVING)

    def _is_blocked(self, upstream: str, known: Mapping[str, bool]) -> bool:
        if upstream in known:
            return known[upstream]
        breaker = self._breakers.get(upstream)
        return breaker is not None and _blocked(breaker)


def _blocked(breaker: CircuitBreaker) -> bool:
    """Whether `breaker` turns every call away now: open, and its cooldown not over."""
    return breaker.state is BreakerState.OPEN and breaker.probe_in_s() > 0


def _upstreams(model: ModelConfig, catalog: Catalog) -> Iterable[str]:
    """The breaker names of `model`'s deployments and of its fallbacks' (every chain's)."""
    models = [model]
    for fallback in model.all_fallbacks:
        resolved = catalog.resolve(fallback)
        if resolved is not None:
            models.append(resolved)
    for each in models:
        for deployment in each.all_deployments:
            yield f"{deployment.provider}/{deployment.upstream_model}"
