"""The same Transport over httpx (provider key `transport: httpx`), for when httpx's behaviour is wanted
over aiohttp's speed: through it a streamed token costs the gateway about twice the CPU (`make bench`
measures both), so aiohttp stays the default.

httpx's failures become exactly the errors AiohttpTransport raises (transport_errors.py builds both):

    httpx's failure                          error                  cause
    ConnectError from a DNS lookup           UpstreamUnavailable    dns_failure
    ConnectError from ssl.SSLError           UpstreamUnavailable    tls_failure         (+ tls_error: the reason)
    ConnectError, ECONNREFUSED (every addr.) UpstreamUnavailable    connection_refused
    ConnectError, other                      UpstreamUnavailable    unreachable, connect_failed
    ConnectTimeout, PoolTimeout              UpstreamTimeout        connect_timeout     (phase: connecting)
    ReadTimeout, WriteTimeout                UpstreamTimeout        read_timeout        (phase: waiting for data)
    TimeoutError (the whole-call limit)      UpstreamTimeout        deadline            (phase: waiting for data)
    before the answer's headers:
      ReadError/WriteError, ECONNRESET       UpstreamUnavailable    connection_reset
      RemoteProtocolError, no response       UpstreamUnavailable    connection_closed
      RemoteProtocolError, other             UpstreamUnavailable    protocol_error
    while the body is read:
      NetworkError, RemoteProtocolError      UpstreamUnavailable    body_cut            (as aiohttp's)
    other httpx error, InvalidURL            UpstreamUnavailable    connection_failed

As with aiohttp, a failure while the body is read chunk by chunk is UPSTREAM_STREAM_INTERRUPTED. The
whole-call limit, which httpx does not have, is an asyncio deadline around the request and each read.
HTTP/1.1 only: HTTP/2 would need the `h2` package, and streams of events gain nothing from it. httpcore
reads a socket 64 KiB at a time and buffers no more than one read of an answer nobody reads, so it has no
read buffer to configure (aiohttp's `read_buffer_bytes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.cookiejar
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import NoReturn

import anyio
import httpx

from server import defaults
from server.errors import UpstreamError
from server.providers.transport import Timeouts, Transport, UpstreamResponse, address_of
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

__all__ = ["HttpxTransport", "httpx_transport_error"]

# What httpx raises: its own errors, InvalidURL (not one of them) for a URL it cannot send to, and
# TimeoutError from the whole-call deadline.
_FAILURES = (httpx.HTTPError, httpx.InvalidURL, TimeoutError)
_QUIET_LOGGERS = ("httpx", "httpcore")


class HttpxTransport(Transport):
    """One httpx client per provider, created on first use inside the running event loop."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_connections: int,
        max_idle_connections: int = defaults.POOL_MAX_IDLE_CONNECTIONS,
        keepalive_expiry_s: float = 30.0,
    ) -> None:
        self._provider = provider
        self._base_url = base_url.rstrip("/")
        self._address = address_of(base_url)
        # Uncompressed answers, as AiohttpTransport asks for; the body is read raw (aiter_raw), never
        # decompressed, whatever the upstream sends.
        self._headers = {**headers, "accept-encoding": "identity"}
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=min(max_idle_connections, max_connections),
            keepalive_expiry=keepalive_expiry_s,
        )
        self._client: httpx.AsyncClient | None = None

    def _open(self) -> httpx.AsyncClient:
        # httpx logs every request's URL at INFO (a base URL's userinfo and query with it), httpcore its
        # traces at DEBUG: neither belongs in the gateway's log, which says what failed in its own words.
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # No proxies from the environment (trust_env=False): they must not see the upstream key. No
        # cookies kept: upstream APIs set none the gateway wants, and one caller's must not reach the next.
        no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        return httpx.AsyncClient(
            headers=self._headers,
            cookies=no_cookies,
            limits=self._limits,
            verify=ssl.create_default_context(),
            trust_env=False,
            follow_redirects=False,  # a redirect could carry the key away
        )

    async def post(
        self, path: str, body: bytes, timeouts: Timeouts, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        if self._client is None:
            self._client = self._open()
        deadline = None if timeouts.total_s is None else asyncio.get_running_loop().time() + timeouts.total_s
        timeout = httpx.Timeout(
            connect=timeouts.connect_s, read=timeouts.read_s, write=timeouts.read_s, pool=timeouts.pool_s
        )
        response: httpx.Response | None = None
        try:
            request = self._client.build_request(
                "POST", self._base_url + path, content=body, headers=headers, timeout=timeout
            )
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except _FAILURES as exc:
            if response is not None:  # the deadline passed just as the answer came
                await response.aclose()
            raise httpx_transport_error(self._provider, self._address, exc, in_body=False) from exc
        return _HttpxResponse(response, self._provider, self._address, deadline)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _HttpxResponse(UpstreamResponse):
    __slots__ = ("_address", "_chunks", "_deadline", "_provider", "_response", "headers", "status")

    def __init__(self, response: httpx.Response, provider: str, address: str, deadline: float | None) -> None:
        self._response = response
        self._chunks: AsyncIterator[bytes] = response.aiter_raw()
        self._provider, self._address = provider, address
        self._deadline = deadline
        self.status = response.status_code
        self.headers = response.headers

    async def __anext__(self) -> bytes:
        try:
            if self._deadline is None:
                return await anext(self._chunks)
            async with asyncio.timeout_at(self._deadline):
                return await anext(self._chunks)
        except _FAILURES as exc:
            self._fail(exc, streaming=True)

    async def read(self, limit: int | None = None) -> bytes:
        body = bytearray()
        try:
            async with asyncio.timeout_at(self._deadline):
                async for chunk in self._chunks:
                    body += chunk
                    if limit is not None and len(body) > limit:
                        break
        except _FAILURES as exc:
            self._fail(exc, streaming=False)
        return bytes(body)

    def _fail(self, exc: BaseException, *, streaming: bool) -> NoReturn:
        error = httpx_transport_error(self._provider, self._address, exc, in_body=True, streaming=streaming)
        raise error from exc

    async def aclose(self) -> None:
        # httpx gives the connection back to its pool when the body was read to its end, and closes it
        # otherwise. Unlike aiohttp, it knows a body has ended only once it has parsed the end: a reader
        # that stops at the last event (the gateway stops at the end event) leaves it unparsed, in the
        # buffer. So what has already arrived is read here, without waiting for more: the first read that
        # would wait is cancelled (httpcore then closes the connection, shielded from the cancellation).
        try:
            if not self._response.is_closed:
                with anyio.move_on_after(0), contextlib.suppress(*_FAILURES):
                    async for _ in self._chunks:
                        pass
        finally:
            try:
                # Closed, so that no generator is left for the GC to finish.
                await self._chunks.aclose()  # type: ignore[attr-defined]  # an async generator
            finally:
                await self._response.aclose()


def httpx_transport_error(
    provider: str, address: str, exc: BaseException, *, in_body: bool, streaming: bool = False
) -> UpstreamError:
    """The gateway's error for an httpx failure talking to `provider` at `address`: the one aiohttp's
    equivalent failure gets (transport.transport_error).

    `in_body`: the answer's headers had come, and its body was being read; `streaming`: chunk by chunk
    (UPSTREAM_STREAM_INTERRUPTED).
    """
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return connect_timeout_error(provider, address)
    if isinstance(exc, httpx.TimeoutException):
        return read_timeout_error(provider, address)
    if isinstance(exc, TimeoutError):
        return deadline_error(provider, address)
    if isinstance(exc, httpx.ConnectError):
        return _connect_error(provider, address, exc)
    if in_body and isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        # aiohttp reports a connection lost or a malformed chunk mid-body as a body cut short; so does this.
        return broken_connection_error(provider, address, "body_cut", streaming=streaming)
    return broken_connection_error(provider, address, _broken_connection(exc), streaming=streaming)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`'s chain of causes (httpx's error, httpcore's, then the socket's or TLS library's), a group's
    members included."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if (cause := current.__cause__ or current.__context__) is not None:
            pending.append(cause)


def _connect_error(provider: str, address: str, exc: httpx.ConnectError) -> UpstreamError:
    causes = list(_causes(exc))
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return dns_error(provider, address)
    if tls := next((cause for cause in causes if isinstance(cause, ssl.SSLError)), None):
        return tls_error(provider, address, safe_identifier(getattr(tls, "reason", None)))
    return connect_errno_error(provider, address, _connect_os_error(causes))


def _connect_os_error(causes: list[BaseException]) -> OSError | None:
    """The socket's error: the one with an errno, or ECONNREFUSED when every address refused."""
    codes = {cause.errno for cause in causes if isinstance(cause, OSError) and cause.errno}
    if len(codes) != 1:  # none said, or the addresses failed differently
        return None
    code = codes.pop()
    return OSError(code, errno.errorcode.get(code, "connection failed"))


def _broken_connection(exc: BaseException) -> str:
    if isinstance(exc, httpx.RemoteProtocolError):
        # httpcore's words when the upstream closes before any answer; any other is an answer not in HTTP.
        return "connection_closed" if "disconnected without sending a response" in str(exc) else "protocol_error"
    if any(
        isinstance(cause, ConnectionResetError) or (isinstance(cause, OSError) and cause.errno == errno.ECONNRESET)
        for cause in _causes(exc)
    ):
        return "connection_reset"
    return "connection_failed"
