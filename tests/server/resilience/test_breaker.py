"""The circuit breaker on a fake clock: when it opens, what it refuses, and how a probe closes it."""

from __future__ import annotations

from server.resilience.breaker import Admission, BreakerPolicy, BreakerState, CircuitBreaker

POLICY = BreakerPolicy(consecutive_failures=10, failure_ratio=0.05, min_requests=50, window_s=60.0, cooldown_s=30.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(policy: BreakerPolicy = POLICY) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker("p/m", policy, clock), clock


def state(b: CircuitBreaker) -> BreakerState:
    """The breaker's state (a call, so that mypy does not narrow it across calls that change it)."""
    return b.state


def calls(b: CircuitBreaker, outcomes: str) -> None:
    """Admit one call per character and record it: "." succeeded, "x" failed."""
    for outcome in outcomes:
        admission = b.allow()
        assert admission is Admission.ADMITTED
        b.record(admission, outcome == ".")


def test_ten_failures_in_a_row_open_it() -> None:
    b, _ = breaker()
    calls(b, "x" * 9)
    assert state(b) is BreakerState.CLOSED
    calls(b, "x")
    assert state(b) is BreakerState.OPEN
    assert b.allow() is Admission.DENIED


def test_a_success_resets_the_run_of_failures() -> None:
    b, _ = breaker()
    calls(b, "x" * 9 + "." + "x" * 9)
    assert state(b) is BreakerState.CLOSED


def test_one_failure_in_three_calls_does_not_open_it() -> None:
    b, _ = breaker()
    calls(b, "x..")
    assert state(b) is BreakerState.CLOSED


def test_the_error_rate_counts_only_from_the_minimum_number_of_calls() -> None:
    b, _ = breaker()
    calls(b, "x" + "." * 47 + "x")  # 49 calls, 2 failures: too few calls to judge
    assert state(b) is BreakerState.CLOSED
    calls(b, ".")  # 50 calls, 2 failures = 4 %
    assert state(b) is BreakerState.CLOSED
    calls(b, "x")  # 51 calls, 3 failures = 5.9 %
    assert state(b) is BreakerState.OPEN


def test_failures_leave_the_window_as_it_slides() -> None:
    b, clock = breaker()
    calls(b, "xx")
    clock.now += 61.0
    calls(b, "." * 47 + "x")  # 48 calls in the window, 1 failure
    calls(b, "..")  # 50 calls, 1 failure
    assert state(b) is BreakerState.CLOSED


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_it() -> None:
    b, clock = breaker()
    calls(b, "x" * 10)
    clock.now += 29.9
    assert b.allow() is Admission.DENIED
    clock.now += 0.1
    probe = b.allow()
    assert probe is Admission.PROBE
    assert state(b) is BreakerState.HALF_OPEN
    assert b.allow() is Admission.DENIED  # one probe at a time
    b.record(probe, True)
    assert state(b) is BreakerState.CLOSED
    assert b.allow() is Admission.ADMITTED


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    b, clock = breaker()
    calls(b, "x" * 10)
    clock.now += 30.0
    probe = b.allow()
    clock.now += 5.0
    b.record(probe, False)
    assert state(b) is BreakerState.OPEN
    clock.now += 29.0
    assert b.allow() is Admission.DENIED
    clock.now += 1.0
    assert b.allow() is Admission.PROBE


def test_a_probe_without_a_verdict_frees_the_slot_for_the_next_call() -> None:
    b, clock = breaker()
    calls(b, "x" * 10)
    clock.now += 30.0
    b.release(b.allow())  # the probe's client cancelled
    assert b.allow() is Admission.PROBE


def test_a_probe_lost_for_a_whole_cooldown_is_replaced() -> None:
    b, clock = breaker()
    calls(b, "x" * 10)
    clock.now += 30.0
    assert b.allow() is Admission.PROBE
    clock.now += 30.0
    assert b.allow() is Admission.PROBE


def test_calls_admitted_before_it_opened_do_not_decide_while_it_is_open() -> None:
    b, _ = breaker()
    late = b.allow()
    calls(b, "x" * 10)
    b.record(late, True)
    assert state(b) is BreakerState.OPEN


def test_a_disabled_breaker_never_opens() -> None:
    b, _ = breaker(BreakerPolicy(enabled=False))
    calls(b, "x" * 100)
    assert state(b) is BreakerState.CLOSED


def test_it_keeps_the_note_of_the_last_failure_and_says_when_it_probes() -> None:
    b, clock = breaker(BreakerPolicy(consecutive_failures=2, cooldown_s=30.0))
    first = ("upstream p failed (HTTP 503)", {"last_error_reason": "UPSTREAM_UNAVAILABLE"})
    last = ("cannot connect to upstream p at 127.0.0.1:9: connection refused", {"cause": "connection_refused"})
    b.record(b.allow(), False, first)
    b.record(b.allow(), True)  # a success leaves the note of the last failure
    assert b.last_failure == first
    assert b.probe_in_s() == 0.0  # closed
    b.record(b.allow(), False, last)
    b.record(b.allow(), False)  # a failure without a note keeps the one before
    assert state(b) is BreakerState.OPEN
    assert b.last_failure == last
    clock.now += 29.5
    assert b.probe_in_s() == 0.5
    clock.now += 1.0
    assert b.probe_in_s() == 0.0
