"""Who a call is for: the optional `x-end-user-id` a caller sends, and the identity forwarded upstream.

A client may name the end user a call is made for, in its metadata: `x-end-user-id: <id>`, 1 to 128
characters of `A-Z a-z 0-9 - _ . : / + = @`. An id that breaks the rule is refused (INVALID_ARGUMENT,
with a BadRequest on `metadata.x-end-user-id`) rather than dropped: it is meant for abuse tracking, and a
silently dropped id would hide the caller's bug. Send an opaque id (a hash), not an e-mail: it goes to
the upstream provider.

Upstream, OpenAI-compatible APIs get `user` and Anthropic `metadata.user_id`: the client's configured
name, then `:` and the end-user id (`search-team:u-4711`); either alone when the other is missing. Gemini's
API has no such field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from server.errors import FieldViolation, InvalidRequest

__all__ = ["END_USER_HEADER", "end_user_from", "upstream_user"]

END_USER_HEADER = "x-end-user-id"
MAX_END_USER_CHARS = 128
_VALID = re.compile(r"[A-Za-z0-9\-_.:/+=@]{1,128}")


def end_user_from(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The checked `x-end-user-id` of a call's metadata, or "" when it sent none."""
    value = next((value for key, value in metadata if key == END_USER_HEADER), None)
    if value is None or value == "":
        return ""
    if isinstance(value, str) and _VALID.fullmatch(value):
        return value
    raise InvalidRequest(
        [
            FieldViolation(
                f"metadata.{END_USER_HEADER}",
                f"expected 1 to {MAX_END_USER_CHARS} characters of A-Z a-z 0-9 - _ . : / + = @",
            )
        ]
    )


def upstream_user(client: str | None, end_user: str) -> str:
    """The caller's identity as upstreams get it: `client:end_user`, either alone, or ""."""
    if client and end_user:
        return f"{client}:{end_user}"
    return client or end_user
