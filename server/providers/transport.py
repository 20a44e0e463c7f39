"""An httpx transport on aiohttp's connection pool and C HTTP parser.

Providers keep httpx's API (one `httpx.AsyncClient` per provider, httpx timeouts and exceptions), but the
bytes travel through aiohttp: measured on the fake upstream's 64-token streams, reading a stream costs
about 15 µs per SSE event this way against about 73 µs through httpx's own h11 transport, which made the
upstream read the largest cost per token in the gateway (`make bench` has the figures).

aiohttp's exceptions are mapped to the httpx exceptions that `providers/http.py` already understands:

    ConnectionTimeoutError              -> httpx.ConnectTimeout
    SocketTimeoutError, ServerTimeout   -> httpx.ReadTimeout
    ClientConnectorError                -> httpx.ConnectError     (refused, DNS, unreachable)
    ServerDisconnectedError             -> httpx.RemoteProtocolError (closed before or during the answer)
    ClientPayloadError                  -> httpx.RemoteProtocolError (a body cut short)
    ClientResponseError                 -> httpx.RemoteProtocolError (not HTTP)
    ClientOSError                       -> httpx.ReadError          (reset)
    other ClientError                   -> httpx.NetworkError
    TimeoutError (the whole-call limit) -> httpx.ReadTimeout

Besides httpx's per-phase timeouts, a request may carry `extensions={TOTAL_TIMEOUT_EXTENSION: seconds}`:
a limit on the whole call, body included (aiohttp's `total`), used for the client's gRPC deadline.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx

__all__ = ["TOTAL_TIMEOUT_EXTENSION", "AiohttpTransport"]

TOTAL_TIMEOUT_EXTENSION = "gateway.total_timeout_s"

# Most specific first: the first match wins.
_EXCEPTIONS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.ClientError, httpx.NetworkError),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(f"{type(exc).__name__}: {exc}") from exc
        raise  # unreachable: ClientError is the last row
    except TimeoutError as exc:  # aiohttp's `total` limit raises a plain TimeoutError
        raise httpx.ReadTimeout("the call's time limit ran out") from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        # readany hands over everything already received at once: one event or several. A plain
        # __anext__ (not an async generator) keeps this per-chunk hop as cheap as it can be.
        with _httpx_errors():
            chunk = await self._response.content.readany()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        # A body read to its end gives the connection back to the pool; one abandoned mid-way (a client
        # cancelled) closes it, which is what tells the upstream to stop generating.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created on first use, inside the running event loop) per transport."""

    def __init__(self, *, max_connections: int, keepalive_expiry_s: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_expiry_s,
            ssl=ssl.create_default_context(),
        )
        # No cookies (upstream APIs set none we want), no proxies from the environment.
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open()
        timeout = request.extensions.get("timeout", {})
        with _httpx_errors():
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                auto_decompress=False,  # httpx decodes by content-encoding, as with its own transport
                timeout=aiohttp.ClientTimeout(
                    total=request.extensions.get(TOTAL_TIMEOUT_EXTENSION),
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
