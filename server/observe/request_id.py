"""Request ids: the caller's `x-request-id`, or one the gateway makes, for every call.

    caller metadata "x-request-id: abc-123"  ──►  valid?  ── yes ──► "abc-123"
                                                   │ no (missing, empty, over 128 characters, or a
                                                   ▼     character outside A-Z a-z 0-9 - _ . : / + = @)
                                             a new UUID4 (the caller learns it from the response headers)

An invalid id is replaced, not refused: a request id is for finding a call afterwards, and a call must
not fail because of it. The id is returned in the response's initial and trailing metadata, written in
every log line of the call (`CURRENT_REQUEST_ID`, read by the logging filter in logs.py), placed in
ErrorInfo metadata and sent upstream as `x-request-id`.

An upstream's own id for its answer (OpenAI `x-request-id`, Anthropic `request-id`) is something the
upstream chose: `upstream_request_id` bounds it before it is logged or sent to a client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from server.observe.record import log_value

__all__ = [
    "CURRENT_REQUEST_ID",
    "MAX_REQUEST_ID_CHARS",
    "REQUEST_ID_HEADER",
    "bound_request_id",
    "new_request_id",
    "request_id_from",
    "upstream_request_id",
    "valid_request_id",
]

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=@")

# The request id of the call this task serves ("" outside a call). Tasks a call starts inherit it.
CURRENT_REQUEST_ID: ContextVar[str] = ContextVar("gateway_request_id", default="")


def valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_CHARS and _ALLOWED.issuperset(value)


def new_request_id() -> str:
    return str(uuid.uuid4())


def request_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's `x-request-id` when it is valid (the first one, if sent more than once), else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) and valid_request_id(value) else new_request_id()
    return new_request_id()


@contextmanager
def bound_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> Iterator[str]:
    """The call's request id (`request_id_from(metadata)`), in CURRENT_REQUEST_ID while the block runs: for
    the RPCs that do not pass the policy seam (ListModels, health checks)."""
    request_id = request_id_from(metadata)
    token = CURRENT_REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        CURRENT_REQUEST_ID.reset(token)


def upstream_request_id(value: str | None) -> str:
    """An upstream's id of its answer, safe to log and to send to a client ("" when there is none)."""
    return log_value(value) if value else ""
