"""HTTP answers of an upstream, mapped to the gateway's errors (transport failures: test_transport.py)."""

from __future__ import annotations

import email.utils
import time

import pytest
from multidict import CIMultiDict

from server.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from server.providers.upstream_errors import (
    error_for_error_type,
    error_for_status,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, UpstreamRejected),
        (401, UpstreamAuthFailed),
        (403, UpstreamAuthFailed),
        (404, UpstreamFailed),
        (408, UpstreamUnavailable),
        (413, UpstreamRejected),
        (422, UpstreamRejected),
        (429, UpstreamRateLimited),
        (500, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (529, UpstreamUnavailable),
    ],
)
def test_http_status(status: int, kind: type[UpstreamError]) -> None:
    error = error_for_status("p", status, CIMultiDict())
    assert type(error) is kind
    assert error.metadata["upstream_http_status"] == str(status)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, 0.0),
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(CIMultiDict(headers)) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    later = email.utils.formatdate(now + 30, usegmt=True)  # whole seconds: up to 1 s less
    seconds = parse_retry_after(CIMultiDict({"retry-after": later}))
    took = time.time() - now  # however long a loaded machine took between the two lines
    assert seconds is not None
    assert 29 - took <= seconds <= 30


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("rate_limit_error", UpstreamRateLimited),
        ("invalid_request_error", UpstreamRejected),
        ("authentication_error", UpstreamAuthFailed),
        ("permission_error", UpstreamAuthFailed),
        ("overloaded_error", UpstreamUnavailable),
        ("server_error", UpstreamUnavailable),
        (None, UpstreamUnavailable),
    ],
)
def test_in_band_error_type(error_type: str | None, kind: type[UpstreamError]) -> None:
    assert type(error_for_error_type("p", error_type)) is kind


async def test_an_endless_event_line_is_a_bad_response_not_unbounded_memory() -> None:
    from server.providers.openai import OpenAIProvider
    from server.sse import MAX_LINE_BYTES
    from tests.mock_upstream import collect, scripted

    body = b"data: {" + b"x" * (MAX_LINE_BYTES + 1)
    outcome = await collect(scripted(OpenAIProvider, body))
    assert outcome.events == []
    assert outcome.error is not None
    assert outcome.error.reason == "UPSTREAM_BAD_RESPONSE"
