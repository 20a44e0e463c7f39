"""The client's error tree, and the one function that turns a failed gRPC call into it.

    ClientError                            base of every error the client raises
    ├── ConfigurationError                 a client option is wrong (also a ValueError): a missing,
    │                                      unreadable or non-PEM ca_file (`path` names it), plaintext
    │                                      to a remote target, a non-positive timeout
    └── GatewayError                       a call failed: code, message, reason, domain, metadata,
        │                                  retry_after, field_violations, request_id (of a turn)
        ├── InvalidArgumentError           INVALID_ARGUMENT: INVALID_REQUEST, MODEL_NOT_FOUND,
        │                                  UPSTREAM_REJECTED_REQUEST; field_violations lists every problem
        ├── AuthenticationError            UNAUTHENTICATED: missing or unknown bearer token
        ├── PermissionDeniedError          PERMISSION_DENIED
        ├── RateLimitError                 RESOURCE_EXHAUSTED: retry_after when the server said when
        ├── UnavailableError               UNAVAILABLE: upstream down, stream cut, gateway shutting down
        │                                  or unreachable (client-side reasons in client/diagnose.py);
        │                                  safe to retry
        ├── DeadlineExceededError          DEADLINE_EXCEEDED: the call's deadline or the upstream's timeout
        ├── InternalServerError            INTERNAL: a gateway bug or a gateway-side upstream problem
        ├── NotImplementedByServerError    UNIMPLEMENTED
        ├── StreamProtocolError            the server broke the StreamGenerate or InteractiveStream
        │                                  contract (no final chunk, data after it, a turn left
        │                                  unfinished, a session ended without go_away); detected by
        │                                  the client
        └── UnknownStatusError             any other status code (UNKNOWN, CANCELLED, ABORTED, ...)

`error_from_rpc_error` decodes the `grpc-status-details-bin` trailer (a google.rpc.Status whose details
hold ErrorInfo, RetryInfo and BadRequest) for the sync and the async client alike; callers raise its
result `from` the grpc.RpcError. `error_from_rpc_status` decodes the same google.rpc.Status when it
arrives as a message (an InteractiveStream TurnError). Error text comes from the server, which never
echoes credentials; the client adds none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigurationError",
    "DeadlineExceededError",
    "GatewayError",
    "InternalServerError",
    "InvalidArgumentError",
    "NotImplementedByServerError",
    "PermissionDeniedError",
    "RateLimitError",
    "StreamProtocolError",
    "UnavailableError",
    "UnknownStatusError",
    "error_from_rpc_error",
    "error_from_rpc_status",
    "error_from_status",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
CLIENT_DOMAIN = "client"


class ClientError(Exception):
    """Base of every error the client raises."""


class ConfigurationError(ClientError, ValueError):
    """A client option is wrong; raised when the client is made, before any call. `path` names the file
    at fault, if any."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class GatewayError(ClientError):
    """A call failed. `str(error)` reads "CODE REASON: message"."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.request_id = request_id

    def __str__(self) -> str:
        head = f"{self.code.name} {self.reason}" if self.reason else self.code.name
        return f"{head}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, reason={self.reason!r}, message={self.message!r})"


class InvalidArgumentError(GatewayError):
    pass


class AuthenticationError(GatewayError):
    pass


class PermissionDeniedError(GatewayError):
    pass


class RateLimitError(GatewayError):
    pass


class UnavailableError(GatewayError):
    pass


class DeadlineExceededError(GatewayError):
    pass


class InternalServerError(GatewayError):
    pass


class NotImplementedByServerError(GatewayError):
    pass


class StreamProtocolError(GatewayError):
    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(grpc.StatusCode.UNKNOWN, message, reason=reason, domain=CLIENT_DOMAIN)


class UnknownStatusError(GatewayError):
    pass


_ERROR_CLASSES: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalServerError,
    grpc.StatusCode.UNIMPLEMENTED: NotImplementedByServerError,
}


def error_from_rpc_error(exc: grpc.RpcError) -> GatewayError:
    """The GatewayError for a failed call of either client (grpc.RpcError or grpc.aio.AioRpcError)."""
    # Sync errors return a tuple of (key, value) namedtuples, aio errors a grpc.aio.Metadata; both
    # iterate as (key, value) pairs. The stubs disagree with each other, hence the cast.
    trailers = cast("Iterable[tuple[str, str | bytes]] | None", exc.trailing_metadata())
    return error_from_status(exc.code(), exc.details() or "", trailers)


def error_from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, str | bytes]] | None
) -> GatewayError:
    """Build the error for `code`, enriched with the details in the status trailer when there is one."""
    status = _status_details(trailing_metadata)
    if status is None:
        return _ERROR_CLASSES.get(code, UnknownStatusError)(code, message)
    return _from_status(code, message, status)


def error_from_rpc_status(status: status_pb2.Status, *, request_id: str = "") -> GatewayError:
    """The GatewayError for a google.rpc.Status carried in a message (an InteractiveStream TurnError)."""
    code = _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _from_status(code, status.message, status, request_id=request_id)


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _from_status(
    code: grpc.StatusCode, message: str, status: status_pb2.Status, *, request_id: str = ""
) -> GatewayError:
    cls = _ERROR_CLASSES.get(code, UnknownStatusError)
    info = error_details_pb2.ErrorInfo()
    retry = error_details_pb2.RetryInfo()
    bad_request = error_details_pb2.BadRequest()
    has_info = any(detail.Unpack(info) for detail in status.details)
    has_retry = any(detail.Unpack(retry) for detail in status.details)
    has_bad_request = any(detail.Unpack(bad_request) for detail in status.details)
    return cls(
        code,
        message or status.message,
        reason=info.reason if has_info else "",
        domain=info.domain if has_info else "",
        metadata=dict(info.metadata) if has_info else None,
        retry_after=retry.retry_delay.ToTimedelta().total_seconds() if has_retry else None,
        field_violations=[(v.field, v.description) for v in bad_request.field_violations] if has_bad_request else (),
        request_id=request_id,
    )


def _status_details(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None  # a broken trailer must not hide the status code and message
    return None
