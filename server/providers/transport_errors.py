"""The gateway's errors for transport failures, whichever HTTP client met them.

Each transport (transport.py's aiohttp, httpx_transport.py's httpx) decides what its client's exception
means, a `cause`, and builds the error here, so that the same failure reads the same through either: the
same error type, reason, message, `cause` and `upstream_address` (the configured host and port, never the
URL's userinfo, path or query).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from server.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

__all__ = [
    "broken_connection_error",
    "connect_errno_error",
    "connect_timeout_error",
    "deadline_error",
    "dns_error",
    "read_timeout_error",
    "tls_error",
]

# The connect errors by errno: (cause, what the message says).
_CONNECT_ERRNOS = {
    errno.ECONNREFUSED: ("connection_refused", "connection refused"),
    errno.EHOSTUNREACH: ("unreachable", "no route to host"),
    errno.ENETUNREACH: ("unreachable", "network unreachable"),
    errno.ECONNRESET: ("connection_reset", "connection reset"),
}
# A connection that broke before or while the answer came, by cause: what the message says.
_BROKEN = {
    "connection_closed": "closed the connection",
    "body_cut": "cut the body short",
    "protocol_error": "did not answer in HTTP",
    "connection_reset": "reset the connection",
    "connection_failed": "failed",
}


def connect_timeout_error(provider: str, address: str) -> UpstreamTimeout:
    message = f"cannot connect to upstream {provider} at {address}: timed out while connecting"
    return _timeout(provider, address, message, "connect_timeout", "connecting")


def read_timeout_error(provider: str, address: str) -> UpstreamTimeout:
    message = f"upstream {provider} at {address} timed out while waiting for data"
    return _timeout(provider, address, message, "read_timeout", "waiting for data")


def deadline_error(provider: str, address: str) -> UpstreamTimeout:
    """The whole-call limit (`Timeouts.total_s`) ran out."""
    message = f"upstream {provider} at {address} did not answer before the call's deadline"
    return _timeout(provider, address, message, "deadline", "waiting for data")


def dns_error(provider: str, address: str) -> UpstreamUnavailable:
    return _unavailable(provider, address, f"{_cannot_connect(provider, address)}: DNS lookup failed", "dns_failure")


def tls_error(provider: str, address: str, reason: str | None) -> UpstreamUnavailable:
    """The TLS handshake failed; `reason` is the TLS library's, already an identifier ("CERTIFICATE_VERIFY_FAILED")."""
    detail = f" ({reason})" if reason else ""
    extra = {"tls_error": reason} if reason else {}
    message = f"{_cannot_connect(provider, address)}: TLS handshake failed{detail}"
    return _unavailable(provider, address, message, "tls_failure", extra)


def connect_errno_error(provider: str, address: str, os_error: OSError | None) -> UpstreamUnavailable:
    """Connecting failed with `os_error` (None: the client did not say why)."""
    code = os_error.errno if os_error is not None else None
    cause, what = _CONNECT_ERRNOS.get(code or 0, ("connect_failed", ""))
    if not what:
        # Several addresses (IPv4 and IPv6) each refused: asyncio joins their errors into one, without errno.
        refused = f"[Errno {errno.ECONNREFUSED}]"
        text = str(os_error) if os_error is not None else ""
        if text.count("[Errno") == text.count(refused) > 0:
            cause, what = _CONNECT_ERRNOS[errno.ECONNREFUSED]
        else:
            name = errno.errorcode.get(code or 0)
            what = f"connection failed ({name})" if name else "connection failed"
    return _unavailable(provider, address, f"{_cannot_connect(provider, address)}: {what}", cause)


def broken_connection_error(provider: str, address: str, cause: str, *, streaming: bool) -> UpstreamError:
    """The connection broke (`cause`: connection_closed, body_cut, protocol_error, connection_reset or
    connection_failed). `streaming`: it cut a body being relayed chunk by chunk (UPSTREAM_STREAM_INTERRUPTED)."""
    where = f"upstream {provider} at {address} {_BROKEN[cause]}"
    if streaming:
        return _unavailable(provider, address, f"{where} mid-stream", cause, reason="UPSTREAM_STREAM_INTERRUPTED")
    return _unavailable(provider, address, where, cause)


def _cannot_connect(provider: str, address: str) -> str:
    return f"cannot connect to upstream {provider} at {address}"


def _unavailable(
    provider: str,
    address: str,
    message: str,
    cause: str,
    extra: Mapping[str, str] | None = None,
    *,
    reason: str | None = None,
) -> UpstreamUnavailable:
    metadata = {"cause": cause, "upstream_address": address, **(extra or {})}
    return UpstreamUnavailable(message, provider=provider, reason=reason, metadata=metadata)


def _timeout(provider: str, address: str, message: str, cause: str, phase: str) -> UpstreamTimeout:
    metadata = {"cause": cause, "upstream_address": address, "phase": phase}
    return UpstreamTimeout(message, provider=provider, metadata=metadata)
