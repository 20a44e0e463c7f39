"""The gateway's one error tree, and the one function that maps it to a google.rpc.Status.

    GatewayError                    base: reason, a client-safe message, metadata
    ├── InvalidRequest              INVALID_ARGUMENT + BadRequest listing every field violation
    │   ├── ModelNotFound           the model is unknown (reason MODEL_NOT_FOUND); names the known ones
    │   └── UnknownRequestId        InteractiveStream: a `cancel` names no live turn (reason UNKNOWN_REQUEST_ID)
    ├── MalformedRequest            INVALID_ARGUMENT (reason MALFORMED_REQUEST): not valid protobuf
    ├── ProtocolViolation           INVALID_ARGUMENT (reason PROTOCOL_VIOLATION): a session broke its rules
    ├── CapabilityUnsupported       FAILED_PRECONDITION (CAPABILITY_UNSUPPORTED): the model cannot do what is asked
    ├── Unauthenticated             UNAUTHENTICATED
    ├── ModelNotAllowed             PERMISSION_DENIED (reason MODEL_NOT_ALLOWED): not one of the client's models
    ├── QuotaExceeded               RESOURCE_EXHAUSTED + QuotaFailure + RetryInfo: over a client's rate or
    │   │                           concurrency limit (reason QUOTA_EXCEEDED)
    │   └── BudgetExceeded          reason BUDGET_EXCEEDED: the client's day or month budget is spent
    ├── ServiceNotFound             NOT_FOUND (reason SERVICE_NOT_FOUND): health: no such service name
    ├── ShuttingDown                UNAVAILABLE (reason SHUTTING_DOWN)
    ├── GatewayOverloaded           RESOURCE_EXHAUSTED + RetryInfo: over a concurrency limit (GATEWAY_OVERLOADED)
    ├── CircuitOpen                 UNAVAILABLE (reason CIRCUIT_OPEN): every deployment's breaker is open
    ├── InternalError               INTERNAL (a bug; details are logged, never sent)
    └── UpstreamError               a provider failed; metadata names the provider
        ├── UpstreamRateLimited     RESOURCE_EXHAUSTED + RetryInfo when the upstream said when
        ├── UpstreamUnavailable     UNAVAILABLE: 5xx, refused, reset, a stream cut mid-way, overloaded
        ├── UpstreamTimeout         DEADLINE_EXCEEDED
        ├── UpstreamFailed          INTERNAL: the upstream refused the gateway itself (404, other 4xx)
        │   └── UpstreamAuthFailed  reason UPSTREAM_AUTH_FAILED: the gateway's own key is wrong (401/403)
        ├── UpstreamRejected        INVALID_ARGUMENT: the upstream refused the request as invalid
        └── UpstreamBadResponse     UNAVAILABLE (reason UPSTREAM_BAD_RESPONSE): unparseable answer

Messages are written by the gateway, never copied from an upstream body (bodies can echo keys), and
`to_rpc_status` scrubs every registered secret from the message and metadata as a last line of defence.
This module is the only one that knows gRPC status codes.

Every status is bounded, whatever the client sent, so that it always fits gRPC's 8 KiB trailer limit (a
client would otherwise see RESOURCE_EXHAUSTED "metadata size exceeds limit" instead of the error): a value
the client chose is quoted cut to 64 characters (`echo`); the message is cut to 512 UTF-8 bytes, each
metadata value to 256 characters and each violation's description to 256; at most 10 violations are
listed, with `violations` (how many there were) in the metadata; an unknown model lists at most 20 known
names; and the serialized google.rpc.Status stays within 2,048 bytes (violations then metadata values give
way first).

Who retries what: the gateway retries and falls back across upstream attempts itself, so an error that
comes out of that (every UpstreamError, and CircuitOpen) says so to the client, which must not multiply
the gateway's attempts by its own: ErrorInfo metadata `client_retry: "no"`, and the trailer
`grpc-retry-pushback-ms: -1`, which stops a gRPC channel's retryPolicy (gRFC A6). Errors of the gateway
itself (SHUTTING_DOWN, GATEWAY_OVERLOADED with RetryInfo) carry neither: a client may retry those.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.defaults import ERROR_DOMAIN

__all__ = [
    "CLIENT_RETRY_KEY",
    "BudgetExceeded",
    "CapabilityUnsupported",
    "CircuitOpen",
    "FieldViolation",
    "GatewayError",
    "GatewayOverloaded",
    "InternalError",
    "InvalidRequest",
    "LimitsUnavailable",
    "MalformedRequest",
    "ModelNotAllowed",
    "ModelNotFound",
    "ProtocolViolation",
    "QuotaExceeded",
    "ServiceNotFound",
    "ShuttingDown",
    "Unauthenticated",
    "UnknownRequestId",
    "UpstreamAuthFailed",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "abort",
    "code_name",
    "code_number",
    "echo",
    "register_secret",
    "registered_secrets",
    "scrub",
    "to_rpc_status",
    "unknown_model_description",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: `field` is a path such as "messages[2].role" or "config.temperature"."""

    field: str
    description: str


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    code: int = code_pb2.INTERNAL
    reason: str = "INTERNAL_ERROR"
    # When set, the status carries a RetryInfo with this delay.
    retry_after_s: float | None = None
    # False when the gateway has already retried (or refused to, for the upstream's sake): the status
    # tells the client not to retry it (ErrorInfo `client_retry: "no"`, grpc-retry-pushback-ms -1).
    client_may_retry: bool = True

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


# The bounds of every status (see the module docstring).
MAX_ECHO_CHARS = 64
MAX_MESSAGE_BYTES = 512
MAX_METADATA_CHARS = 256
MAX_DESCRIPTION_CHARS = 256
MAX_VIOLATIONS = 10
MAX_STATUS_BYTES = 2048
# How many violations the message spells out; BadRequest lists up to MAX_VIOLATIONS.
_VIOLATIONS_IN_MESSAGE = 5


def echo(value: str) -> str:
    """A value the client chose, quoted for an error message: cut to MAX_ECHO_CHARS, its length then said."""
    if len(value) <= MAX_ECHO_CHARS:
        return repr(value)
    return f"{value[:MAX_ECHO_CHARS]!r}… ({len(value)} characters)"


class InvalidRequest(GatewayError):
    code = code_pb2.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        shown = self.violations[:_VIOLATIONS_IN_MESSAGE]
        summary = "; ".join(f"{v.field}: {v.description}" for v in shown)
        if len(self.violations) > len(shown):
            summary += f"; and {len(self.violations) - len(shown)} more"
        super().__init__(f"invalid request: {summary}")


class ModelNotFound(InvalidRequest):
    """The only problem with the request is its model name; also listed as a `model` field violation.

    The message suggests the closest known names; metadata has them (`closest`) and every known name.
    """

    reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str, known: Iterable[str]) -> None:
        known_models = sorted(known)
        super().__init__([FieldViolation("model", unknown_model_description(model, known_models))])
        self.message = self.violations[0].description
        self.metadata = {
            "model": model,
            "closest": ",".join(closest_names(model, known_models)),
            "known_models": _listed(known_models[:_NAMES_IN_MESSAGE], MAX_METADATA_CHARS),
            "known_models_total": str(len(known_models)),
        }


# How many known names an unknown-model message spells out; ListModels has them all.
_NAMES_IN_MESSAGE = 20


def _listed(names: Sequence[str], limit: int) -> str:
    """The first `names`, comma-separated, as many whole ones as fit in `limit` characters."""
    listed = ""
    for name in names:
        longer = f"{listed},{name}" if listed else name
        if len(longer) > limit:
            break
        listed = longer
    return listed


def closest_names(model: str, known_models: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(model, list(known_models), n=3, cutoff=0.6)


def unknown_model_description(model: str, known_models: Iterable[str]) -> str:
    known = sorted(known_models)
    closest = closest_names(model, known)
    hint = f"did you mean {' or '.join(repr(name) for name in closest)}? " if closest else ""
    listed = ", ".join(known[:_NAMES_IN_MESSAGE])
    more = (
        f" and {len(known) - _NAMES_IN_MESSAGE} more (ListModels lists them all)"
        if len(known) > _NAMES_IN_MESSAGE
        else ""
    )
    return f"unknown model {echo(model)}; {hint}known models: {listed}{more}"


class UnknownRequestId(InvalidRequest):
    """An InteractiveStream `cancel` names a request_id that is not running or waiting (unknown or finished)."""

    reason = "UNKNOWN_REQUEST_ID"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            [FieldViolation("cancel.request_id", f"no running or waiting turn has request_id {echo(request_id)}")]
        )
        self.metadata = {"request_id": request_id}


class MalformedRequest(GatewayError):
    """The request could not be decoded as its protobuf message type (server/decoding.py)."""

    code = code_pb2.INVALID_ARGUMENT
    reason = "MALFORMED_REQUEST"


class ProtocolViolation(GatewayError):
    """An InteractiveStream client broke the session's rules; the stream ends with this error."""

    code = code_pb2.INVALID_ARGUMENT
    reason = "PROTOCOL_VIOLATION"


class CapabilityUnsupported(GatewayError):
    """The call needs a capability (metadata `capability`: "tools", "json_schema", …) that no deployment of
    its model has. Raised before any upstream call."""

    code = code_pb2.FAILED_PRECONDITION
    reason = "CAPABILITY_UNSUPPORTED"

    def __init__(self, model: str, capability: str) -> None:
        super().__init__(
            f"model {model} cannot serve this call: it lacks the {capability!r} capability",
            metadata={"capability": capability, "model": model},
        )


class Unauthenticated(GatewayError):
    code = code_pb2.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class ModelNotAllowed(GatewayError):
    """The client may not call this model. The metadata names the model asked for, never the models the
    client (or any other) may call."""

    code = code_pb2.PERMISSION_DENIED
    reason = "MODEL_NOT_ALLOWED"

    def __init__(self, client: str, model: str) -> None:
        super().__init__(f"client {client!r} may not call model {model!r}", metadata={"model": model})


class QuotaExceeded(GatewayError):
    """A client is over one of its limits: `limit` names it (requests_per_minute, tokens_per_minute,
    concurrent_streams), `subject` whom it limits ("client:<name>"). The status carries a QuotaFailure
    with both, and a RetryInfo of when the limit has room again."""

    code = code_pb2.RESOURCE_EXHAUSTED
    reason = "QUOTA_EXCEEDED"

    def __init__(
        self, message: str, *, limit: str, subject: str, quota_value: int | float, retry_after_s: float
    ) -> None:
        super().__init__(message, metadata={"limit": limit, "subject": subject, "quota_value": f"{quota_value:g}"})
        self.limit = limit
        self.subject = subject
        self.quota_value = quota_value
        self.retry_after_s = retry_after_s


class BudgetExceeded(QuotaExceeded):
    """A client's spending budget for the day or the month is used up; RetryInfo runs to the period's reset."""

    reason = "BUDGET_EXCEEDED"


class LimitsUnavailable(GatewayError):
    """The shared limits store (Redis) did not answer in time and the config says to refuse what cannot be
    counted (`limits.backend_unavailable: closed`); metadata `backend` is its host:port, never its URL."""

    code = code_pb2.UNAVAILABLE
    reason = "LIMITS_UNAVAILABLE"

    def __init__(self, message: str, *, backend: str) -> None:
        super().__init__(message, metadata={"backend": backend})


class ServiceNotFound(GatewayError):
    """A health check names a service the gateway does not report on (the health protocol's NOT_FOUND)."""

    code = code_pb2.NOT_FOUND
    reason = "SERVICE_NOT_FOUND"


class ShuttingDown(GatewayError):
    code = code_pb2.UNAVAILABLE
    reason = "SHUTTING_DOWN"


class InternalError(GatewayError):
    code = code_pb2.INTERNAL
    reason = "INTERNAL_ERROR"


class GatewayOverloaded(GatewayError):
    """Too many upstream calls in flight (metadata `limit`: "process" or "provider"); retry after a moment."""

    code = code_pb2.RESOURCE_EXHAUSTED
    reason = "GATEWAY_OVERLOADED"

    def __init__(self, message: str, *, retry_after_s: float, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after_s = retry_after_s


class CircuitOpen(GatewayError):
    """No deployment of the model or its fallbacks was tried: each one's circuit breaker is open."""

    code = code_pb2.UNAVAILABLE
    reason = "CIRCUIT_OPEN"
    client_may_retry = False


class UpstreamError(GatewayError):
    """A provider failed. `provider` names it; `http_status` is the upstream's status code, if any."""

    code = code_pb2.UNAVAILABLE
    reason = "UPSTREAM_ERROR"
    client_may_retry = False  # the call's plan of attempts has run its course

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        http_status: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        merged = {"provider": provider, **(metadata or {})}
        if http_status is not None:
            merged["upstream_http_status"] = str(http_status)
        super().__init__(message, reason=reason, metadata=merged)
        self.provider = provider
        self.http_status = http_status


class UpstreamRateLimited(UpstreamError):
    code = code_pb2.RESOURCE_EXHAUSTED
    reason = "UPSTREAM_RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, provider=provider, http_status=http_status, metadata=metadata)
        self.retry_after_s = retry_after_s


class UpstreamUnavailable(UpstreamError):
    code = code_pb2.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"


class UpstreamTimeout(UpstreamError):
    code = code_pb2.DEADLINE_EXCEEDED
    reason = "UPSTREAM_TIMEOUT"


class UpstreamFailed(UpstreamError):
    """The upstream refused a request the gateway built: a gateway-side problem, not the client's."""

    code = code_pb2.INTERNAL
    reason = "UPSTREAM_REQUEST_FAILED"


class UpstreamAuthFailed(UpstreamFailed):
    reason = "UPSTREAM_AUTH_FAILED"


class UpstreamRejected(UpstreamError):
    code = code_pb2.INVALID_ARGUMENT
    reason = "UPSTREAM_REJECTED_REQUEST"


class UpstreamBadResponse(UpstreamError):
    code = code_pb2.UNAVAILABLE
    reason = "UPSTREAM_BAD_RESPONSE"


# Secrets (upstream keys, client tokens) that must never leave in an error; filled by config loading.
_secrets: set[str] = set()
_REDACTED = "[REDACTED]"
# ErrorInfo metadata of an error the client must not retry, and the trailer that says it to a channel's
# retryPolicy: a negative pushback means "do not retry" (gRFC A6).
CLIENT_RETRY_KEY = "client_retry"
_NO_RETRY_PUSHBACK = ("grpc-retry-pushback-ms", "-1")


def register_secret(value: str | None) -> None:
    """Remember a secret so that `scrub` removes it. Very short values are ignored (too many false hits)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def registered_secrets() -> tuple[str, ...]:
    """Every secret registered so far: a worker process registers them again (server/workers.py)."""
    return tuple(_secrets)


def scrub(text: str) -> str:
    """Replace every registered secret in `text`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}
_CODE_NUMBERS: dict[str, int] = {name: number for number, name in _CODE_NAMES.items()}
_UNKNOWN: int = grpc.StatusCode.UNKNOWN.value[0]


def code_name(error: GatewayError) -> str:
    """The gRPC code of `error` by name ("UNAVAILABLE"), for logs and metrics."""
    return _CODE_NAMES[error.code]


def code_number(name: str) -> int:
    """The gRPC code named `name` as a number ("UNAVAILABLE" -> 14), for traces; 2 (UNKNOWN) if no code."""
    return _CODE_NUMBERS.get(name, _UNKNOWN)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(error: GatewayError) -> status_pb2.Status:
    """Map any gateway error to a google.rpc.Status with ErrorInfo and the details that apply, bounded
    (see the module docstring): secrets are scrubbed before anything is cut, so no cut leaves half of one."""
    metadata = {key: _cut(scrub(value), MAX_METADATA_CHARS) for key, value in error.metadata.items()}
    if not error.client_may_retry:
        metadata[CLIENT_RETRY_KEY] = "no"
    violations: tuple[FieldViolation, ...] = ()
    if isinstance(error, InvalidRequest):
        violations = error.violations
        if len(violations) > MAX_VIOLATIONS:
            metadata["violations"] = str(len(violations))
    status = _status(error, metadata, violations[:MAX_VIOLATIONS])
    if status.ByteSize() > MAX_STATUS_BYTES:
        status = _shrunk(error, metadata, violations[:MAX_VIOLATIONS], len(violations))
    return status


def _status(
    error: GatewayError, metadata: Mapping[str, str], violations: Sequence[FieldViolation]
) -> status_pb2.Status:
    status = status_pb2.Status(code=error.code, message=_cut_bytes(scrub(error.message), MAX_MESSAGE_BYTES))
    status.details.append(
        _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata))
    )
    if isinstance(error, InvalidRequest):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_cut(v.field, MAX_ECHO_CHARS), description=_cut(scrub(v.description), MAX_DESCRIPTION_CHARS)
                )
                for v in violations
            ]
        )
        status.details.append(_pack(bad_request))
    if isinstance(error, QuotaExceeded):
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=error.subject,
            description=scrub(error.message),
            quota_metric=f"{ERROR_DOMAIN}/{error.limit}",
            quota_id=error.limit,
            quota_dimensions={"client": error.subject.removeprefix("client:")},
            quota_value=int(error.quota_value),
        )
        status.details.append(_pack(error_details_pb2.QuotaFailure(violations=[violation])))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(round(error.retry_after_s * 1000))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def _shrunk(
    error: GatewayError, metadata: dict[str, str], violations: Sequence[FieldViolation], total: int
) -> status_pb2.Status:
    """A status over MAX_STATUS_BYTES made to fit: fewer violations first, then shorter metadata values, then
    fewer metadata entries (the request id and `client_retry` last of all)."""
    kept = list(violations)
    while kept:
        kept.pop()
        status = _status(error, {**metadata, "violations": str(total)}, kept)
        if status.ByteSize() <= MAX_STATUS_BYTES:
            return status
    short = {key: _cut(value, MAX_ECHO_CHARS) for key, value in metadata.items()}
    if total:
        short["violations"] = str(total)
    keys = sorted(short, key=lambda key: key in _KEPT_LAST)
    while True:
        status = _status(error, short, [])
        if status.ByteSize() <= MAX_STATUS_BYTES or not keys:
            return status
        del short[keys.pop(0)]


_KEPT_LAST = frozenset({"request_id", "session_request_id", "violations", CLIENT_RETRY_KEY})


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), marked with "…" when cut."""
    if len(text) <= limit // 4 or len(encoded := text.encode("utf-8", "surrogatepass")) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "…"


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    error: GatewayError,
    trailing_metadata: Sequence[tuple[str, str]] = (),
) -> NoReturn:
    """End the call with `error` as its status (code, message and details in the trailers, with
    `trailing_metadata` beside them: an abort replaces whatever trailers were set before)."""
    status = rpc_status.to_status(to_rpc_status(error))
    trailers: tuple[tuple[str, str | bytes], ...] = (*status.trailing_metadata, *trailing_metadata)
    if not error.client_may_retry:
        trailers = (*trailers, _NO_RETRY_PUSHBACK)
    await context.abort_with_status(_Status(status.code, status.details, trailers))
    raise AssertionError("abort_with_status returned")  # it always raises; this satisfies NoReturn


@dataclass(frozen=True, slots=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]
