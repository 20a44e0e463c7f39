"""Concurrency caps: refused at once, never queued."""

from __future__ import annotations

from server.resilience.limits import UpstreamLimits


def test_a_provider_cap_refuses_only_that_provider() -> None:
    limits = UpstreamLimits(10, {"a": 1})
    assert limits.try_acquire("a") is None
    assert limits.try_acquire("a") == "provider"
    assert limits.try_acquire("b") is None  # no cap of its own
    assert limits.in_flight == 2


def test_the_process_cap_refuses_every_provider() -> None:
    limits = UpstreamLimits(2, {"a": 5, "b": 5})
    assert limits.try_acquire("a") is None
    assert limits.try_acquire("b") is None
    assert limits.try_acquire("a") == "process"
    assert limits.try_acquire("b") == "process"


def test_release_gives_the_slot_back() -> None:
    limits = UpstreamLimits(1, {"a": 1})
    assert limits.try_acquire("a") is None
    limits.release("a")
    assert limits.in_flight == 0
    assert limits.try_acquire("a") is None  # the provider slot is free again
