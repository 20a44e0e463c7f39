"""The rate-limit trailers, in OpenAI's names and duration format."""

from __future__ import annotations

import pytest

from server.config import ClientLimits
from server.interactive.wire import rate_limits_pb
from server.policy.headers import RateLimitsLeft, RateLimitWindow, go_duration, rate_limit_trailers, rate_limits_left
from server.policy.store import Granted


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.017, "17ms"),
        (0.0171, "18ms"),
        (1.0, "1s"),
        (17.787, "17.787s"),
        (90.5, "1m30.5s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (3725.25, "1h2m5.25s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_only_the_limits_a_client_has_are_sent() -> None:
    limits = ClientLimits(requests_per_minute=60, concurrent_streams=3)
    assert rate_limit_trailers(limits, Granted(59, 1.0)) == (
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "59"),
        ("x-ratelimit-reset-requests", "1s"),
    )


def test_both_limits() -> None:
    limits = ClientLimits(requests_per_minute=60, tokens_per_minute=150000)
    trailers = dict(rate_limit_trailers(limits, Granted(59, 1.0, 149984, 0.0064)))
    assert trailers["x-ratelimit-remaining-tokens"] == "149984"
    assert trailers["x-ratelimit-reset-tokens"] == "7ms"
    assert trailers["x-ratelimit-limit-tokens"] == "150000"


def test_a_client_without_rate_limits_has_nothing_left_to_tell() -> None:
    limits = ClientLimits(concurrent_streams=3)
    assert rate_limits_left(limits, Granted()) is None
    assert rate_limit_trailers(limits, Granted()) == ()


def test_what_is_left_is_the_trailers_and_a_turns_rate_limits_alike() -> None:
    left = rate_limits_left(ClientLimits(tokens_per_minute=150000), Granted(None, None, 149984, 0.0064))
    assert left is not None
    assert left == RateLimitsLeft(tokens=RateLimitWindow(150000, 149984, 0.0064))
    assert left.trailers() == (
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-tokens", "149984"),
        ("x-ratelimit-reset-tokens", "7ms"),
    )
    turn = rate_limits_pb(left)
    assert turn is not None
    assert not turn.HasField("remaining_requests")
    assert (turn.limit_tokens, turn.remaining_tokens, turn.reset_tokens.ToMilliseconds()) == (150000, 149984, 7)
