"""Which failures are retried, how long the waits are, and the retry budget."""

from __future__ import annotations

import pytest

from server.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.resilience.retry import FailureClass, RetryBudget, RetryPolicy, classify


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (UpstreamRateLimited("429", provider="p", http_status=429), FailureClass.RATE_LIMITED),
        (UpstreamUnavailable("503", provider="p", http_status=503), FailureClass.UNAVAILABLE),
        (UpstreamUnavailable("cut", provider="p", reason="UPSTREAM_STREAM_INTERRUPTED"), FailureClass.UNAVAILABLE),
        (UpstreamTimeout("slow", provider="p"), FailureClass.UNAVAILABLE),
        (UpstreamBadResponse("malformed", provider="p"), FailureClass.UNAVAILABLE),
        (UpstreamError("other", provider="p"), FailureClass.UNAVAILABLE),
        (UpstreamRejected("400", provider="p", http_status=400), FailureClass.FATAL),
        (UpstreamAuthFailed("401", provider="p", http_status=401), FailureClass.FATAL),
        (UpstreamFailed("404", provider="p", http_status=404), FailureClass.FATAL),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, UpstreamError) else "",
)
def test_classify(error: UpstreamError, failure: FailureClass) -> None:
    assert classify(error) is failure


def test_backoff_is_full_jitter_under_an_exponential_ceiling_with_a_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_cap_s=3.0)
    assert [policy.backoff_s(n, lambda: 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff_s(3, lambda: 0.25) == 0.5
    assert policy.backoff_s(3, lambda: 0.0) == 0.0
    assert policy.backoff_s(10_000, lambda: 1.0) == 3.0  # no overflow however many failures


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(retry_after_cap_s=5.0)

    def limited(after: float | None) -> UpstreamRateLimited:
        return UpstreamRateLimited("429", provider="p", retry_after_s=after)

    assert policy.wait_s(limited(1.5), 1, lambda: 0.0) == 1.5
    assert policy.wait_s(limited(5.0), 1, lambda: 0.0) == 5.0
    assert policy.wait_s(limited(7.0), 1, lambda: 0.0) is None
    assert policy.wait_s(limited(None), 1, lambda: 1.0) == policy.backoff_s(1, lambda: 1.0)


def test_the_budget_starts_with_its_reserve_and_refills_by_its_ratio() -> None:
    budget = RetryBudget(ratio=0.2, reserve=2.0)
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    for _ in range(4):
        budget.earn()
    assert not budget.try_spend()  # 0.8 of a retry
    budget.earn()
    assert budget.try_spend()


def test_the_budget_never_holds_more_than_its_reserve() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2.0)
    for _ in range(100):
        budget.earn()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


def test_a_reserve_of_0_still_lets_the_ratio_buy_whole_retries() -> None:
    budget = RetryBudget(ratio=0.5, reserve=0.0)
    assert not budget.try_spend()
    budget.earn()
    budget.earn()
    assert budget.try_spend()
