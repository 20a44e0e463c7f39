"""KeyPool: which key an attempt gets, as keys are refused, rate limited and wake up (a hand-moved clock)."""

from __future__ import annotations

import math

import pytest

from server import defaults
from server.config import ApiKey
from server.errors import UpstreamRateLimited
from server.providers.keys import KeyPool

A, B, C = ApiKey("KEY_A", "sk-a"), ApiKey("KEY_B", "sk-b"), ApiKey("KEY_C", "sk-c")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def takes(pool: KeyPool) -> list[str]:
    """The keys one attempt goes through when every key fails, in order."""
    tried: set[str] = set()
    order = []
    while (key := pool.take(tried)) is not None:
        order.append(key.env)
    return order


def test_each_attempt_starts_with_the_next_key_in_turn_and_tries_each_once() -> None:
    pool = KeyPool("p", [A, B, C], clock=Clock())
    assert takes(pool) == ["KEY_A", "KEY_B", "KEY_C"]
    assert [pool.take(set()).env for _ in range(4)] == ["KEY_A", "KEY_B", "KEY_C", "KEY_A"]  # type: ignore[union-attr]


def test_a_key_set_aside_is_skipped_until_every_key_is() -> None:
    pool = KeyPool("p", [A, B], clock=Clock())
    pool.set_aside(A, 401)
    assert takes(pool) == ["KEY_B"]
    assert pool.usable == 1
    pool.set_aside(B, 403)
    # Nothing usable: the attempt still gets a key, so that the client sees the upstream's own answer.
    assert len(takes(pool)) == 1


def test_a_resting_key_wakes_after_its_retry_after() -> None:
    clock = Clock()
    pool = KeyPool("p", [A, B], clock=clock)
    pool.rest(A, 7.0)
    assert takes(pool) == ["KEY_B"]
    clock.now += 7.0
    assert sorted(takes(pool)) == ["KEY_A", "KEY_B"]


def test_every_key_resting_fails_at_once_until_the_first_wakes() -> None:
    clock = Clock()
    pool = KeyPool("p", [A, B], clock=clock)
    pool.rest(A, 7.0)
    pool.rest(B, 3.0)
    with pytest.raises(UpstreamRateLimited) as limited:
        pool.take(set())
    assert limited.value.retry_after_s == pytest.approx(3.0)
    assert limited.value.metadata["keys_resting"] == "2"


@pytest.mark.parametrize(
    ("retry_after_s", "rests_s"),
    [
        (None, defaults.KEY_REST_S),
        (math.inf, defaults.KEY_REST_S),
        (math.nan, defaults.KEY_REST_S),
        (1e300, defaults.KEY_REST_MAX_S),
        (-5.0, 0.0),
    ],
)
def test_a_rest_is_bounded_whatever_the_upstream_says(retry_after_s: float | None, rests_s: float) -> None:
    clock = Clock()
    pool = KeyPool("p", [A, B], clock=clock)
    pool.rest(A, retry_after_s)
    pool.rest(B, retry_after_s)
    if rests_s:
        with pytest.raises(UpstreamRateLimited) as limited:
            pool.take(set())
        assert limited.value.retry_after_s == pytest.approx(rests_s)
    clock.now += rests_s
    assert pool.usable == 2


def test_a_pool_needs_two_keys() -> None:
    with pytest.raises(ValueError, match="at least two keys"):
        KeyPool("p", [A])
