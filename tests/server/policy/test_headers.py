"""The rate-limit trailers, in OpenAI's names and duration format."""

from __future__ import annotations

import pytest

from server.config import ClientLimits
from server.policy.headers import go_duration, rate_limit_trailers
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
