"""The error tree maps to google.rpc.Status once, with the right code, reason and details."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2

from server.defaults import ERROR_DOMAIN
from server.errors import (
    MAX_MESSAGE_BYTES,
    MAX_STATUS_BYTES,
    CircuitOpen,
    FieldViolation,
    GatewayError,
    GatewayOverloaded,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    ShuttingDown,
    Unauthenticated,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    code_number,
    register_secret,
    to_rpc_status,
)
from tests.rpc import detail

CASES: list[tuple[GatewayError, int, str]] = [
    (InvalidRequest([FieldViolation("model", "required")]), code_pb2.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (ModelNotFound("x", ["demo"]), code_pb2.INVALID_ARGUMENT, "MODEL_NOT_FOUND"),
    (Unauthenticated("no"), code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (ShuttingDown("bye"), code_pb2.UNAVAILABLE, "SHUTTING_DOWN"),
    (InternalError("bug"), code_pb2.INTERNAL, "INTERNAL_ERROR"),
    (UpstreamRateLimited("slow down", provider="p"), code_pb2.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
    (UpstreamUnavailable("down", provider="p"), code_pb2.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    (UpstreamTimeout("slow", provider="p"), code_pb2.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
    (UpstreamAuthFailed("key", provider="p"), code_pb2.INTERNAL, "UPSTREAM_AUTH_FAILED"),
    (UpstreamFailed("404", provider="p"), code_pb2.INTERNAL, "UPSTREAM_REQUEST_FAILED"),
    (UpstreamRejected("bad", provider="p"), code_pb2.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
    (UpstreamBadResponse("junk", provider="p"), code_pb2.UNAVAILABLE, "UPSTREAM_BAD_RESPONSE"),
]


@pytest.mark.parametrize(("error", "code", "reason"), CASES, ids=lambda v: type(v).__name__)
def test_each_error_has_its_code_and_reason(error: GatewayError, code: int, reason: str) -> None:
    status = to_rpc_status(error)
    info = detail(status, error_details_pb2.ErrorInfo)
    assert status.code == code
    assert info is not None
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    assert status.code != code_pb2.UNKNOWN


@pytest.mark.parametrize(
    ("error", "client_retry"),
    [
        (UpstreamUnavailable("down", provider="p"), "no"),
        (UpstreamRateLimited("slow down", provider="p", retry_after_s=1.0), "no"),
        (UpstreamTimeout("slow", provider="p"), "no"),
        (CircuitOpen("every circuit is open"), "no"),
        (ShuttingDown("bye"), None),
        (GatewayOverloaded("busy", retry_after_s=1.0), None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, GatewayError) else str(v),
)
def test_what_the_gateway_already_retried_tells_the_client_not_to_retry(
    error: GatewayError, client_retry: str | None
) -> None:
    info = detail(to_rpc_status(error), error_details_pb2.ErrorInfo)
    assert info is not None
    assert info.metadata.get("client_retry") == client_retry


def test_invalid_request_carries_bad_request_with_every_violation() -> None:
    status = to_rpc_status(InvalidRequest([FieldViolation("a", "x"), FieldViolation("b", "y")]))
    bad_request = detail(status, error_details_pb2.BadRequest)
    assert bad_request is not None
    assert [(v.field, v.description) for v in bad_request.field_violations] == [("a", "x"), ("b", "y")]
    assert status.message == "invalid request: a: x; b: y"


def test_rate_limit_carries_retry_info_only_when_known() -> None:
    with_delay = to_rpc_status(UpstreamRateLimited("r", provider="p", retry_after_s=1.25))
    retry = detail(with_delay, error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToMilliseconds() == 1250
    assert detail(to_rpc_status(UpstreamRateLimited("r", provider="p")), error_details_pb2.RetryInfo) is None


def test_upstream_errors_name_the_provider_and_http_status() -> None:
    info = detail(
        to_rpc_status(UpstreamUnavailable("x", provider="openai", http_status=503)), error_details_pb2.ErrorInfo
    )
    assert info is not None
    assert dict(info.metadata) == {"provider": "openai", "upstream_http_status": "503", "client_retry": "no"}


def test_registered_secrets_are_scrubbed_from_message_and_metadata() -> None:
    secret = "sk-live-secret-value-123456"
    register_secret(secret)
    error = UpstreamFailed(f"oops {secret}", provider="p", metadata={"hint": f"key={secret}"})
    status = to_rpc_status(error)
    assert secret not in str(status)
    assert "[REDACTED]" in status.message


@pytest.mark.parametrize(("name", "number"), [("OK", 0), ("INVALID_ARGUMENT", 3), ("UNAVAILABLE", 14), ("NOPE", 2)])
def test_a_code_name_maps_back_to_its_number(name: str, number: int) -> None:
    assert code_number(name) == number


def test_a_status_stays_within_its_byte_bound_however_large_its_parts() -> None:
    error = InvalidRequest([FieldViolation(f"messages[{i}].role", "é" * 1000) for i in range(50)])
    error.metadata = {f"key_{i}": "v" * 10_000 for i in range(20)}
    error.message = "ü" * 100_000

    status = to_rpc_status(error)

    assert status.ByteSize() <= MAX_STATUS_BYTES
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    info = detail(status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert info.metadata["violations"] == "50"


def test_a_secret_is_scrubbed_before_a_message_is_cut_so_no_half_of_it_leaves() -> None:
    secret = "sk-straddling-the-cut-0123456789"
    register_secret(secret)
    error = GatewayError("x" * (MAX_MESSAGE_BYTES - 10) + secret)

    message = to_rpc_status(error).message

    assert secret[:8] not in message
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
