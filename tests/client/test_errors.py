"""Decoding a failed call's status and its `grpc-status-details-bin` trailer into the client error tree."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2

from client import errors
from client.errors import (
    AuthenticationError,
    DeadlineExceededError,
    GatewayError,
    InternalServerError,
    InvalidArgumentError,
    NotImplementedByServerError,
    PermissionDeniedError,
    RateLimitError,
    UnavailableError,
    UnknownStatusError,
    error_from_rpc_error,
    error_from_status,
)

DOMAIN = "gateway.holysheep.ai"


def trailer(code: grpc.StatusCode, message: str, *details: ProtoMessage) -> list[tuple[str, str | bytes]]:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return [("content-type", "application/grpc"), ("grpc-status-details-bin", status.SerializeToString())]


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RateLimitError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, InternalServerError),
        (grpc.StatusCode.UNIMPLEMENTED, NotImplementedByServerError),
        (grpc.StatusCode.UNKNOWN, UnknownStatusError),
        (grpc.StatusCode.CANCELLED, UnknownStatusError),
        (grpc.StatusCode.DATA_LOSS, UnknownStatusError),
    ],
)
def test_status_code_selects_class(code: grpc.StatusCode, cls: type[GatewayError]) -> None:
    error = error_from_status(code, "boom", None)
    assert type(error) is cls
    assert isinstance(error, GatewayError)
    assert (error.code, error.message, error.reason, error.retry_after) == (code, "boom", "", None)
    assert error.field_violations == []
    assert error.metadata == {}


def test_error_info_and_retry_info() -> None:
    delay = duration_pb2.Duration(seconds=7, nanos=250_000_000)
    metadata = trailer(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "slow down",
        error_details_pb2.ErrorInfo(reason="UPSTREAM_RATE_LIMITED", domain=DOMAIN, metadata={"provider": "openai"}),
        error_details_pb2.RetryInfo(retry_delay=delay),
    )
    error = error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", metadata)
    assert isinstance(error, RateLimitError)
    assert (error.reason, error.domain, error.metadata) == ("UPSTREAM_RATE_LIMITED", DOMAIN, {"provider": "openai"})
    assert error.retry_after == 7.25
    assert str(error) == "RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED: slow down"


def test_bad_request_lists_every_field_violation() -> None:
    violation = error_details_pb2.BadRequest.FieldViolation
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            violation(field="model", description="required"),
            violation(field="messages", description="empty"),
        ]
    )
    metadata = trailer(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request",
        error_details_pb2.ErrorInfo(reason="INVALID_REQUEST", domain=DOMAIN),
        bad_request,
    )
    error = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "invalid request", metadata)
    assert isinstance(error, InvalidArgumentError)
    assert error.field_violations == [("model", "required"), ("messages", "empty")]
    assert error.retry_after is None


def test_message_falls_back_to_the_status_message() -> None:
    metadata = trailer(grpc.StatusCode.INTERNAL, "from the trailer")
    assert error_from_status(grpc.StatusCode.INTERNAL, "", metadata).message == "from the trailer"


@pytest.mark.parametrize("value", [b"\xff\xff not a status", "a text value"])
def test_broken_trailer_keeps_code_and_message(value: str | bytes) -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "down", [("grpc-status-details-bin", value)])
    assert isinstance(error, UnavailableError)
    assert (error.message, error.reason) == ("down", "")


def test_aio_rpc_error() -> None:
    metadata = grpc.aio.Metadata(
        *trailer(grpc.StatusCode.UNAUTHENTICATED, "no", error_details_pb2.ErrorInfo(reason="UNAUTHENTICATED"))
    )
    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), metadata, "no")
    error = error_from_rpc_error(exc)
    assert isinstance(error, AuthenticationError)
    assert (error.reason, error.message) == ("UNAUTHENTICATED", "no")


def test_client_detected_protocol_error() -> None:
    error = errors.StreamProtocolError("cut", reason="MISSING_END")
    assert (error.code, error.domain, str(error)) == (grpc.StatusCode.UNKNOWN, "client", "UNKNOWN MISSING_END: cut")


def test_repr_names_class_code_and_reason() -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "down", None)
    assert repr(error) == "UnavailableError(UNAVAILABLE, reason='', message='down')"
