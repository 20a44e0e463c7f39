"""Which caller ids are kept, which are replaced, and how an upstream's id is bounded."""

from __future__ import annotations

import pytest

from server.observe.request_id import (
    MAX_REQUEST_ID_CHARS,
    request_id_from,
    upstream_request_id,
    valid_request_id,
)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abc-123", True),
        ("550e8400-e29b-41d4-a716-446655440000", True),
        ("a.b_c:d/e+f=g@h", True),
        ("x" * MAX_REQUEST_ID_CHARS, True),
        ("x" * (MAX_REQUEST_ID_CHARS + 1), False),
        ("", False),
        ("a b", False),
        ("a,b", False),
        ("a;b", False),
        ("a\nb", False),
        ("é", False),
    ],
)
def test_a_request_id_is_valid_when_short_and_plain(value: str, valid: bool) -> None:
    assert valid_request_id(value) is valid


def test_the_first_x_request_id_is_taken() -> None:
    metadata = (("authorization", "Bearer t"), ("x-request-id", "first"), ("x-request-id", "second"))
    assert request_id_from(metadata) == "first"


@pytest.mark.parametrize("metadata", [None, (), (("x-request-id", "bad id"),), (("x-request-id", b"bytes"),)])
def test_a_missing_or_unusable_id_is_replaced_by_a_fresh_uuid(
    metadata: tuple[tuple[str, str | bytes], ...] | None,
) -> None:
    made = request_id_from(metadata)
    assert valid_request_id(made)
    assert len(made) == 36
    assert made != request_id_from(metadata)


@pytest.mark.parametrize(
    ("value", "bounded"),
    [(None, ""), ("", ""), ("req_abc", "req_abc"), ("req x\n", "req\\x20x\\x0a"), ("r" * 200, "r" * 128 + "…")],
)
def test_an_upstreams_id_is_bounded_and_escaped(value: str | None, bounded: str) -> None:
    assert upstream_request_id(value) == bounded
