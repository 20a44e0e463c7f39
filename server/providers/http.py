"""What every HTTP provider shares: the pooled httpx client, timeouts, and HTTP failures as UpstreamErrors.

Upstream error bodies are never copied into errors (they can echo keys); only their status, and an
error type or code that looks like an identifier, are kept.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping

import httpx

from server import defaults
from server.config import ProviderConfig
from server.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "error_for_error_type",
    "error_for_status",
    "error_for_transport",
    "make_client",
    "parse_retry_after",
    "request_timeout",
    "safe_identifier",
]

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


def make_client(config: ProviderConfig, headers: Mapping[str, str]) -> httpx.AsyncClient:
    """One pooled client per provider: keep-alive, no redirects (a redirect could carry the key away)."""
    return httpx.AsyncClient(
        base_url=config.base_url,
        headers=dict(headers),
        follow_redirects=False,
        timeout=httpx.Timeout(
            connect=config.connect_timeout_s,
            read=config.read_timeout_s,
            write=defaults.WRITE_TIMEOUT_S,
            pool=defaults.POOL_TIMEOUT_S,
        ),
        limits=httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=min(config.max_connections, defaults.POOL_MAX_KEEPALIVE),
        ),
        trust_env=False,  # proxies from the environment must not see the upstream key
    )


def request_timeout(config: ProviderConfig, timeout_s: float | None) -> httpx.Timeout:
    """Timeouts for one call: the provider's, each capped by what is left of the client's deadline.

    The cap stops a little before the deadline, so that the client gets the gateway's DEADLINE_EXCEEDED
    with the phase in ErrorInfo rather than gRPC's bare one.
    """
    if timeout_s is None:
        remaining = defaults.REQUEST_TIMEOUT_S
    else:
        remaining = max(timeout_s - defaults.DEADLINE_MARGIN_S, timeout_s / 2, 0.001)
    return httpx.Timeout(
        connect=min(config.connect_timeout_s, remaining),
        read=min(config.read_timeout_s, remaining),
        write=min(defaults.WRITE_TIMEOUT_S, remaining),
        pool=min(defaults.POOL_TIMEOUT_S, remaining),
    )


def safe_identifier(value: object) -> str | None:
    """`value` if it looks like an error type or code ("rate_limit_exceeded"), else None."""
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def error_for_status(
    provider: str, status: int, headers: httpx.Headers, error_type: str | None = None
) -> UpstreamError:
    """Map a non-2xx upstream answer to the error the client sees."""
    meta = {"upstream_error_type": error_type} if error_type else {}
    if status in (401, 403):
        return UpstreamAuthFailed(
            f"upstream {provider} rejected the gateway's credentials (HTTP {status}); "
            "the gateway operator must fix the provider key",
            provider=provider,
            http_status=status,
            metadata=meta,
        )
    if status == 429:
        return UpstreamRateLimited(
            f"upstream {provider} is rate limiting requests (HTTP 429)",
            provider=provider,
            http_status=status,
            retry_after_s=parse_retry_after(headers),
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


def error_for_error_type(provider: str, error_type: str | None) -> UpstreamError:
    """Map an in-band error event (an error inside an HTTP 200 stream) by its type or code."""
    kind = (error_type or "").lower()
    meta = {"upstream_error_type": error_type} if error_type else {}
    what = f"upstream {provider} reported an error mid-response" + (f" ({error_type})" if error_type else "")
    if "rate_limit" in kind:
        return UpstreamRateLimited(what, provider=provider, metadata=meta)
    if "invalid_request" in kind:
        return UpstreamRejected(what, provider=provider, metadata=meta)
    if "authentication" in kind or "permission" in kind:
        return UpstreamAuthFailed(what, provider=provider, metadata=meta)
    return UpstreamUnavailable(what, provider=provider, metadata=meta)


def error_for_transport(provider: str, exc: httpx.TransportError, *, streaming: bool) -> UpstreamError:
    """Map an httpx transport failure (timeouts, refused and reset connections)."""
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "waiting for data",
            httpx.WriteTimeout: "sending the request",
            httpx.PoolTimeout: "waiting for a free connection",
        }.get(type(exc), "waiting")
        return UpstreamTimeout(
            f"upstream {provider} timed out while {phase}", provider=provider, metadata={"phase": phase}
        )
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(f"cannot connect to upstream {provider}", provider=provider)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError) and streaming:
        return UpstreamUnavailable(
            f"upstream {provider} closed the connection mid-stream",
            provider=provider,
            reason="UPSTREAM_STREAM_INTERRUPTED",
        )
    return UpstreamUnavailable(
        f"the connection to upstream {provider} failed ({type(exc).__name__})", provider=provider
    )
