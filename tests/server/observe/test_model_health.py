"""Health per model from the breakers, on a fake clock and a fake timer: which names turn NOT_SERVING when,
and when they serve again."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from server.observe.health import NOT_SERVING, SERVING, HealthService
from server.observe.model_health import ModelHealth, model_service
from server.resilience.breaker import Admission, BreakerPolicy, CircuitBreaker
from server.routing.catalog import Catalog, Deployment, ModelConfig
from server.routing.plan import Resilience

MODELS = (
    ModelConfig(name="lonely", provider="p", upstream_model="a", aliases=("solo",)),
    ModelConfig(name="guarded", provider="p", upstream_model="a", fallbacks=("backup",)),
    ModelConfig(name="backup", provider="q", upstream_model="b"),
    ModelConfig(
        name="pair", deployments=(Deployment("p", "a", weight=95), Deployment("q", "c", weight=5, name="canary"))
    ),
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """call_later that keeps the callbacks for the test to run."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], Timer]] = []

    def __call__(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = Timer()
        self.pending.append((delay_s, callback, timer))
        return timer

    def fire(self) -> float:
        """Run the oldest timer not cancelled; its delay."""
        while self.pending:
            delay, callback, timer = self.pending.pop(0)
            if not timer.cancelled:
                callback()
                return delay
        raise AssertionError("no timer pending")


class Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class World:
    def __init__(self, cooldown_s: float = 30.0, clock: Clock | None = None) -> None:
        self.clock = Clock() if clock is None else clock
        self.timers = Timers()
        self.resilience = Resilience(
            breaker=BreakerPolicy(consecutive_failures=1, cooldown_s=cooldown_s), clock=self.clock
        )
        self.catalog = Catalog(MODELS, {"p", "q"})
        self.health = HealthService()
        self.model_health = ModelHealth(self.catalog, self.health, call_later=self.timers)
        self.model_health.start(self.resilience)

    def breaker(self, provider: str, upstream: str) -> CircuitBreaker:
        return self.resilience.breaker(Deployment(provider, upstream))

    def fail(self, provider: str, upstream: str) -> None:
        breaker = self.breaker(provider, upstream)
        breaker.record(breaker.allow(), False)

    def status(self, name: str) -> int | None:
        return self.health.status(model_service(name))


def test_every_model_and_alias_starts_serving_and_nothing_else_is_named() -> None:
    world = World()
    assert sorted(world.model_health.services) == sorted(
        model_service(n) for n in ("lonely", "solo", "guarded", "backup", "pair")
    )
    assert all(world.health.status(s) == SERVING for s in world.model_health.services)
    assert world.health.status(model_service("p/anything")) is None


def test_a_model_whose_only_deployment_opens_is_not_serving_and_its_alias_neither() -> None:
    world = World()
    world.fail("p", "a")
    assert world.status("lonely") == NOT_SERVING
    assert world.status("solo") == NOT_SERVING


def test_a_model_with_a_fallback_or_a_second_deployment_left_stays_serving() -> None:
    world = World()
    world.fail("p", "a")
    assert world.status("guarded") == SERVING  # its fallback `backup` still serves
    assert world.status("pair") == SERVING  # its canary still serves
    world.fail("q", "b")
    assert world.status("guarded") == NOT_SERVING
    assert world.status("backup") == NOT_SERVING
    assert world.status("pair") == SERVING
    world.fail("q", "c")
    assert world.status("pair") == NOT_SERVING


def test_the_end_of_the_cooldown_serves_again_and_a_failed_probe_closes_it_again() -> None:
    world = World(cooldown_s=30.0)
    world.fail("p", "a")
    assert world.status("lonely") == NOT_SERVING
    world.clock.now = 30.0
    assert world.timers.fire() == 30.0
    assert world.status("lonely") == SERVING  # a call now would be let through as the probe
    breaker = world.breaker("p", "a")
    probe = breaker.allow()
    assert probe is Admission.PROBE
    breaker.record(probe, False)
    assert world.status("lonely") == NOT_SERVING
    world.clock.now = 60.0
    world.timers.fire()
    probe = breaker.allow()
    breaker.record(probe, True)
    assert world.status("lonely") == SERVING
    assert all(timer.cancelled for _, _, timer in world.timers.pending)


def test_a_timer_that_fires_a_hair_early_looks_again_later() -> None:
    world = World(cooldown_s=30.0)
    world.fail("p", "a")
    world.clock.now = 29.999
    world.timers.fire()
    assert world.status("lonely") == NOT_SERVING
    assert abs(world.timers.pending[-1][0] - 0.001) < 1e-9
    world.clock.now = 30.0
    world.timers.fire()
    assert world.status("lonely") == SERVING


class CrossingClock(Clock):
    """A clock whose next read can be `before` and every later one `after`: the end of a cooldown crossed
    between two reads."""

    def __init__(self) -> None:
        super().__init__()
        self._after: float | None = None

    def cross(self, before: float, after: float) -> None:
        self.now, self._after = before, after

    def __call__(self) -> float:
        now = self.now
        if self._after is not None:
            self.now, self._after = self._after, None
        return now


def test_a_cooldown_that_ends_while_the_timer_looks_still_serves_again() -> None:
    # Seen under load with uvloop, whose timers may fire a little early: the timer found the breaker still
    # blocked, set NOT_SERVING, then read the clock again past the cooldown and set no timer: the model
    # stayed NOT_SERVING until the next state change.
    clock = CrossingClock()
    world = World(cooldown_s=30.0, clock=clock)
    world.fail("p", "a")
    clock.cross(before=29.999, after=30.0)
    world.timers.fire()
    assert world.status("lonely") == NOT_SERVING
    world.timers.fire()  # the look again, which the second read of the clock used to skip
    assert world.status("lonely") == SERVING


def test_close_cancels_the_timers() -> None:
    world = World()
    world.fail("p", "a")
    world.model_health.close()
    assert [timer.cancelled for _, _, timer in world.timers.pending] == [True]


def test_a_pass_through_deployment_changes_no_name() -> None:
    world = World()
    world.fail("p", "made-up")
    assert world.status("lonely") == SERVING
    assert not world.timers.pending


def test_shutdown_makes_everything_not_serving_for_good() -> None:
    world = World()
    world.health.set("", SERVING)
    world.health.enter_graceful_shutdown()
    breaker = world.breaker("p", "a")
    world.fail("p", "a")
    world.clock.now = 30.0
    world.timers.fire()
    breaker.record(breaker.allow(), True)
    assert world.health.status("") == NOT_SERVING
    assert world.status("lonely") == NOT_SERVING
    assert world.status("backup") == NOT_SERVING


def test_a_failing_breaker_watcher_does_not_reach_the_call(caplog: pytest.LogCaptureFixture) -> None:
    world = World()

    def broken(breaker: CircuitBreaker) -> None:
        raise RuntimeError("watcher bug")

    world.resilience.watch_breakers(broken)
    world.fail("p", "a")  # the breaker opens: both watchers hear it, the broken one is logged
    assert world.status("lonely") == NOT_SERVING
    assert "breaker watcher" in caplog.text
