"""The one way providers speak HTTP: POST a body to an upstream, read the answer's status, headers and bytes.

Every failure of the transport is already the gateway's own upstream error, saying what failed and where
(`cause` and `upstream_address` in its metadata; the address is the configured host and port, never the
URL's userinfo, path or query):

    aiohttp's failure                       error                  cause
    ClientConnectorDNSError                 UpstreamUnavailable    dns_failure
    ClientSSLError (handshake, certificate) UpstreamUnavailable    tls_failure         (+ tls_error: the reason)
    ClientConnectorError, ECONNREFUSED      UpstreamUnavailable    connection_refused
    ClientConnectorError, other             UpstreamUnavailable    unreachable, connect_failed
    ConnectionTimeoutError                  UpstreamTimeout        connect_timeout     (phase: connecting)
    SocketTimeoutError                      UpstreamTimeout        read_timeout        (phase: waiting for data)
    TimeoutError (the whole-call limit)     UpstreamTimeout        deadline            (phase: waiting for data)
    ClientOSError ECONNRESET, reset         UpstreamUnavailable    connection_reset
    ServerDisconnectedError                 UpstreamUnavailable    connection_closed
    ClientPayloadError (a body cut short)   UpstreamUnavailable    body_cut
    ClientResponseError (not HTTP)          UpstreamUnavailable    protocol_error
    other ClientError                       UpstreamUnavailable    connection_failed

A failure while a body is read chunk by chunk (`async for chunk in response`) is a stream cut mid-way
(reason UPSTREAM_STREAM_INTERRUPTED); before the answer's headers, or while a whole body is read, it is
not. aiohttp carries the bytes by default: its connection pool and C HTTP parser make reading a stream
cost about 15 µs per SSE event against about 73 µs through httpx's own h11 transport. httpx_transport.py
is the same interface over httpx (provider key `transport: httpx`), raising the same errors; the error
builders both share are in transport_errors.py, and `make bench` measures both.

Both transports ask for uncompressed answers (`accept-encoding: identity`) and hand over the body's bytes as
they came, never decompressed: a compressed body is the caller's to refuse (http.py does), so that a small
gzip bomb cannot become a large body. Both keep at most `max_idle_connections` idle connections (the rest
are closed as they come back), and buffer at most about twice `read_buffer_bytes` of an answer that is not
being read before they stop reading its socket.
"""

from __future__ import annotations

import abc
import errno
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey

from server import defaults
from server.errors import UpstreamError
from server.providers.transport_errors import (
    broken_connection_error,
    connect_errno_error,
    connect_timeout_error,
    deadline_error,
    dns_error,
    read_timeout_error,
    tls_error,
)
from server.providers.upstream_errors import safe_identifier

__all__ = [
    "AiohttpTransport",
    "Timeouts",
    "Transport",
    "UpstreamResponse",
    "address_of",
    "transport_error",
]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """One call's time limits: waiting for a pooled or new connection (`pool_s`, connecting included),
    connecting and the TLS handshake (`connect_s`), the longest silence between two reads (`read_s`),
    and the whole call, body included (`total_s`)."""

    pool_s: float
    connect_s: float
    read_s: float
    total_s: float | None = None


class UpstreamResponse(abc.ABC):
    """An answer: its status and headers, then its body read once, chunk by chunk or whole. Always close it.

    Iterating gives the body's bytes as they arrive (several events at once, or part of one).
    """

    status: int
    headers: Mapping[str, str]  # case-insensitive

    def __aiter__(self) -> UpstreamResponse:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> bytes: ...

    @abc.abstractmethod
    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body, or its first `limit` bytes or a little more (the rest is left unread)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Give the connection back when the body was read to its end; close it otherwise (which tells the
        upstream to stop generating)."""


class Transport(abc.ABC):
    """POSTs to one upstream, with the provider's headers (its key among them)."""

    @abc.abstractmethod
    async def post(
        self, path: str, body: bytes, timeouts: Timeouts, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """POST `body` to the upstream's base URL + `path`; the answer with its body still unread.

        `headers` are this request's own (its `x-request-id`, its `traceparent`), sent beside the provider's;
        never a secret."""

    async def aclose(self) -> None:  # noqa: B027  (optional hook: an in-memory transport holds nothing)
        """Close pooled connections."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def address_of(url: str) -> str:
    """The `host:port` of `url` (`[v6]:port` for an IPv6 host), without userinfo, path or query."""
    parsed = urlsplit(url)
    host = parsed.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme)
    except ValueError:  # not a number: aiohttp will refuse the URL itself, with its own error
        port = None
    return f"{host}:{port}" if port is not None else host


class AiohttpTransport(Transport):
    """One aiohttp session per provider, created on first use inside the running event loop."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_connections: int,
        max_idle_connections: int = defaults.POOL_MAX_IDLE_CONNECTIONS,
        keepalive_expiry_s: float = 30.0,
        read_buffer_bytes: int = defaults.UPSTREAM_READ_BUFFER_BYTES,
    ) -> None:
        self._provider = provider
        self._base_url = base_url.rstrip("/")
        self._address = address_of(base_url)
        # Responses are asked for uncompressed: event streams are read as they come, and compressing
        # them would only add latency (and a compressed body would need a bound on what it inflates to).
        self._headers = {**headers, "accept-encoding": "identity"}
        self._max_connections = max_connections
        self._max_idle_connections = min(max_idle_connections, max_connections)
        self._keepalive_expiry_s = keepalive_expiry_s
        self._read_buffer_bytes = read_buffer_bytes
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = _IdleCappedConnector(
            max_idle=self._max_idle_connections,
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_expiry_s,
            ssl=ssl.create_default_context(),
        )
        # No cookies (upstream APIs set none we want); no proxies from the environment, which must not
        # see the upstream key. No decompression: see the module's docstring.
        return aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            read_bufsize=self._read_buffer_bytes,
        )

    async def post(
        self, path: str, body: bytes, timeouts: Timeouts, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        if self._session is None:
            self._session = self._open()
        try:
            response = await self._session.post(
                self._base_url + path,
                data=body,
                headers=headers,
                allow_redirects=False,  # a redirect could carry the key away
                timeout=aiohttp.ClientTimeout(
                    total=timeouts.total_s,
                    connect=timeouts.pool_s,
                    sock_connect=timeouts.connect_s,
                    sock_read=timeouts.read_s,
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(self._provider, self._address, exc, streaming=False) from exc
        return _AiohttpResponse(response, self._provider, self._address)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _IdleCappedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, keeping at most `max_idle` idle connections (httpx's max_keepalive_connections,
    which aiohttp lacks): a connection given back beyond that closes the longest idle one."""

    def __init__(self, *, max_idle: int, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._max_idle = max_idle

    def _release(self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        idle = self._conns.get(key)
        while idle is not None and len(idle) > self._max_idle:
            oldest, _ = idle.popleft()
            oldest.close()


class _AiohttpResponse(UpstreamResponse):
    __slots__ = ("_address", "_content", "_provider", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, provider: str, address: str) -> None:
        self._response = response
        self._content = response.content
        self._provider, self._address = provider, address
        self.status = response.status
        self.headers = response.headers

    async def __anext__(self) -> bytes:
        # The per-token path: readany hands over everything already received, one event or several. A
        # plain __anext__ with a try (free until it raises), not an async generator or a context manager.
        try:
            chunk = await self._content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._fail(exc, streaming=True)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read(self, limit: int | None = None) -> bytes:
        body = bytearray()
        try:
            while chunk := await self._content.readany():
                body += chunk
                if limit is not None and len(body) > limit:
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._fail(exc, streaming=False)
        return bytes(body)

    def _fail(self, exc: BaseException, *, streaming: bool) -> NoReturn:
        raise transport_error(self._provider, self._address, exc, streaming=streaming) from exc

    async def aclose(self) -> None:
        if self._content.at_eof():
            self._response.release()
        else:
            self._response.close()


def transport_error(provider: str, address: str, exc: BaseException, *, streaming: bool) -> UpstreamError:
    """The gateway's error for an aiohttp failure talking to `provider` at `address`.

    `streaming`: the failure cut a body being relayed chunk by chunk (UPSTREAM_STREAM_INTERRUPTED).
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return connect_timeout_error(provider, address)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return read_timeout_error(provider, address)
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
        return deadline_error(provider, address)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return dns_error(provider, address)
    if isinstance(exc, aiohttp.ClientSSLError):
        return tls_error(provider, address, _tls_reason(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return connect_errno_error(provider, address, exc.os_error)
    return broken_connection_error(provider, address, _broken_connection(exc), streaming=streaming)


def _tls_reason(exc: aiohttp.ClientSSLError) -> str | None:
    """The TLS library's reason ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER"), an identifier."""
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    return safe_identifier(getattr(cause, "reason", None))


def _broken_connection(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection_closed"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "body_cut"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol_error"
    if isinstance(exc, ConnectionResetError) or (isinstance(exc, OSError) and exc.errno == errno.ECONNRESET):
        return "connection_reset"
    return "connection_failed"
