"""An upstream's answers as the gateway's errors: HTTP statuses and in-band error events. (Transport
failures are the transport's own: providers/transport.py raises them as the gateway's errors.)

Upstream error bodies are never copied into errors (they can echo keys); only their status, and an
error type or code that looks like an identifier, are kept.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

from server.defaults import RETRY_AFTER_MAX_S
from server.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)

__all__ = [
    "bounded_delay",
    "error_for_error_type",
    "error_for_status",
    "parse_retry_after",
    "safe_identifier",
]

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
# Error types that say the gateway's key is wrong, whatever the status (Gemini answers a bad key with 400).
_KEY_REJECTED = frozenset({"API_KEY_INVALID", "authentication_error", "invalid_api_key"})
# In-band error types by name: Anthropic's error types, and Google's canonical codes (Gemini's `status`).
# Types not listed (overloaded_error, api_error, UNAVAILABLE, INTERNAL, …) are UpstreamUnavailable.
_IN_BAND_KINDS: dict[str, type[UpstreamError]] = {
    "overloaded_error": UpstreamUnavailable,
    "api_error": UpstreamUnavailable,
    "rate_limit_error": UpstreamRateLimited,
    "invalid_request_error": UpstreamRejected,
    "request_too_large": UpstreamRejected,
    "authentication_error": UpstreamAuthFailed,
    "permission_error": UpstreamAuthFailed,
    "not_found_error": UpstreamFailed,
    "RESOURCE_EXHAUSTED": UpstreamRateLimited,
    "INVALID_ARGUMENT": UpstreamRejected,
    "OUT_OF_RANGE": UpstreamRejected,
    "UNAUTHENTICATED": UpstreamAuthFailed,
    "PERMISSION_DENIED": UpstreamAuthFailed,
    "NOT_FOUND": UpstreamFailed,
    "FAILED_PRECONDITION": UpstreamFailed,
}


def safe_identifier(value: object) -> str | None:
    """`value` if it looks like an error type or code ("rate_limit_exceeded"), else None."""
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def bounded_delay(seconds: float | None) -> float | None:
    """An upstream's retry delay clamped to [0, RETRY_AFTER_MAX_S]; None when it is not a finite number
    (`inf`, `nan`), which is ignored as if the upstream had said nothing."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date, clamped to
    [0, RETRY_AFTER_MAX_S]; a value that is not a finite number is ignored.

    `headers` are looked up by lower-case name (the transport's are case-insensitive)."""
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            if (delay := bounded_delay(float(millis) / 1000)) is not None:
                return delay
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return bounded_delay(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return bounded_delay(when.timestamp() - time.time())


def error_for_status(
    provider: str,
    status: int,
    headers: Mapping[str, str],
    error_type: str | None = None,
    retry_after_s: float | None = None,
) -> UpstreamError:
    """Map a non-2xx upstream answer to the error the client sees.

    `error_type` is the identifier the body gave; `retry_after_s` a delay the body gave (Google's
    RetryInfo), used when no Retry-After header says when.
    """
    meta = {"upstream_error_type": error_type} if error_type else {}
    if status in (401, 403) or error_type in _KEY_REJECTED:
        return UpstreamAuthFailed(
            f"upstream {provider} rejected the gateway's credentials (HTTP {status}); "
            "the gateway operator must fix the provider key",
            provider=provider,
            http_status=status,
            metadata=meta,
        )
    if status == 429:
        from_header = parse_retry_after(headers)
        return UpstreamRateLimited(
            f"upstream {provider} is rate limiting requests (HTTP 429)",
            provider=provider,
            http_status=status,
            retry_after_s=bounded_delay(retry_after_s) if from_header is None else from_header,
            metadata=meta,
        )
    if status in (400, 413, 422):
        return UpstreamRejected(
            f"upstream {provider} rejected the request as invalid (HTTP {status}"
            + (f", {error_type})" if error_type else ")"),
            provider=provider,
            http_status=status,
            metadata=meta,
        )
    if status == 408 or status >= 500:
        return UpstreamUnavailable(
            f"upstream {provider} failed (HTTP {status})",
            provider=provider,
            http_status=status,
            metadata=meta,
        )
    if 400 <= status < 500:
        return UpstreamFailed(
            f"upstream {provider} refused the gateway's request (HTTP {status})",
            provider=provider,
            http_status=status,
            metadata=meta,
        )
    return UpstreamBadResponse(
        f"upstream {provider} answered with unexpected HTTP {status}", provider=provider, http_status=status
    )


def error_for_error_type(provider: str, error_type: str | None, retry_after_s: float | None = None) -> UpstreamError:
    """Map an in-band error (an error inside an HTTP 200 answer) by its type or code."""
    meta = {"upstream_error_type": error_type} if error_type else {}
    what = f"upstream {provider} reported an error mid-response" + (f" ({error_type})" if error_type else "")
    kind = _IN_BAND_KINDS.get(error_type or "")
    if kind is None:  # OpenAI-compatible servers spell their types freely ("rate_limit_exceeded", …)
        lowered = (error_type or "").lower()
        if "rate_limit" in lowered:
            kind = UpstreamRateLimited
        elif "invalid_request" in lowered:
            kind = UpstreamRejected
        elif "authentication" in lowered or "permission" in lowered:
            kind = UpstreamAuthFailed
        else:
            kind = UpstreamUnavailable
    if kind is UpstreamRateLimited:
        return UpstreamRateLimited(what, provider=provider, retry_after_s=bounded_delay(retry_after_s), metadata=meta)
    return kind(what, provider=provider, metadata=meta)
