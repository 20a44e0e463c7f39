"""The transport's failures are the gateway's upstream errors, saying what failed and where, never a secret."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import itertools
import logging
import socket
import ssl
from collections.abc import Callable

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey

from server.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from server.providers.httpx_transport import HttpxTransport, httpx_transport_error
from server.providers.transport import AiohttpTransport, Timeouts, Transport, address_of, transport_error
from tests.fakes.dead_upstreams import plaintext_server, refused_port, serving, silent_server, untrusted_tls_server
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tools.devcerts import CertFiles

KEY = ConnectionKey("api.example.com", 443, True, True, None, None, None, None)
ADDRESS = "api.example.com:443"
TIMEOUTS = Timeouts(pool_s=30.0, connect_s=30.0, read_s=30.0, total_s=60.0)


def ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason  # set by the ssl module on real errors
    return error


@pytest.mark.parametrize(
    ("exc", "streaming", "kind", "reason", "cause", "message"),
    [
        pytest.param(
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_refused",
            f"cannot connect to upstream p at {ADDRESS}: connection refused",
            id="refused",
        ),
        pytest.param(
            aiohttp.ClientConnectorError(
                KEY,
                OSError("Multiple exceptions: [Errno 111] Connect call failed, [Errno 111] Connect call failed"),
            ),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_refused",
            f"cannot connect to upstream p at {ADDRESS}: connection refused",
            id="refused on every address",
        ),
        pytest.param(
            aiohttp.ClientConnectorError(KEY, OSError(errno.EHOSTUNREACH, "no route")),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "unreachable",
            f"cannot connect to upstream p at {ADDRESS}: no route to host",
            id="unreachable",
        ),
        pytest.param(
            aiohttp.ClientConnectorError(KEY, OSError(errno.EACCES, "denied")),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connect_failed",
            f"cannot connect to upstream p at {ADDRESS}: connection failed (EACCES)",
            id="other connect error",
        ),
        pytest.param(
            aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known")),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "dns_failure",
            f"cannot connect to upstream p at {ADDRESS}: DNS lookup failed",
            id="DNS",
        ),
        pytest.param(
            aiohttp.ClientConnectorSSLError(KEY, ssl_error("WRONG_VERSION_NUMBER")),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "tls_failure",
            f"cannot connect to upstream p at {ADDRESS}: TLS handshake failed (WRONG_VERSION_NUMBER)",
            id="TLS",
        ),
        pytest.param(
            aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError(1, "self-signed")),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "tls_failure",
            f"cannot connect to upstream p at {ADDRESS}: TLS handshake failed",
            id="certificate",
        ),
        pytest.param(
            aiohttp.ConnectionTimeoutError("Connection timeout to host https://api.example.com/v1?key=s"),
            False,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "connect_timeout",
            f"cannot connect to upstream p at {ADDRESS}: timed out while connecting",
            id="connect timeout",
        ),
        pytest.param(
            aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
            True,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "read_timeout",
            f"upstream p at {ADDRESS} timed out while waiting for data",
            id="read timeout",
        ),
        pytest.param(
            TimeoutError(),
            True,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "deadline",
            f"upstream p at {ADDRESS} did not answer before the call's deadline",
            id="whole-call limit",
        ),
        pytest.param(
            aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_reset",
            f"upstream p at {ADDRESS} reset the connection",
            id="reset before the answer",
        ),
        pytest.param(
            aiohttp.ServerDisconnectedError(),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_closed",
            f"upstream p at {ADDRESS} closed the connection",
            id="closed before the answer",
        ),
        pytest.param(
            aiohttp.ClientPayloadError("Response payload is not completed"),
            True,
            UpstreamUnavailable,
            "UPSTREAM_STREAM_INTERRUPTED",
            "body_cut",
            f"upstream p at {ADDRESS} cut the body short mid-stream",
            id="body cut mid-stream",
        ),
        pytest.param(
            aiohttp.ClientConnectionResetError("reset"),
            True,
            UpstreamUnavailable,
            "UPSTREAM_STREAM_INTERRUPTED",
            "connection_reset",
            f"upstream p at {ADDRESS} reset the connection mid-stream",
            id="reset mid-stream",
        ),
        pytest.param(
            aiohttp.ClientError("something else"),
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_failed",
            f"upstream p at {ADDRESS} failed",
            id="any other client error",
        ),
    ],
)
def test_transport_failures(
    exc: BaseException, streaming: bool, kind: type[UpstreamError], reason: str, cause: str, message: str
) -> None:
    error = transport_error("p", ADDRESS, exc, streaming=streaming)
    assert (type(error), error.reason, error.message) == (kind, reason, message)
    assert (error.metadata["cause"], error.metadata["upstream_address"], error.provider) == (cause, ADDRESS, "p")
    assert "key=s" not in repr(error.metadata)


def test_a_tls_failure_names_the_tls_library_reason() -> None:
    error = transport_error(
        "p", ADDRESS, aiohttp.ClientConnectorSSLError(KEY, ssl_error("WRONG_VERSION_NUMBER")), streaming=False
    )
    assert error.metadata["tls_error"] == "WRONG_VERSION_NUMBER"


def chained(*chain: BaseException) -> BaseException:
    """The first exception, raised from the second, raised from the third… as httpx raises from httpcore
    from the socket or TLS library."""
    for exc, cause in itertools.pairwise(chain):
        exc.__cause__ = cause
    return chain[0]


def connect_error(*causes: BaseException) -> BaseException:
    return chained(
        httpx.ConnectError("All connection attempts failed"), OSError("All connection attempts failed"), *causes
    )


REFUSED = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
HTTPX_CONNECT_FAILURES = [
    pytest.param(connect_error(REFUSED), "connection_refused", "connection refused", id="refused"),
    pytest.param(
        connect_error(ExceptionGroup("attempts", [REFUSED, ConnectionRefusedError(errno.ECONNREFUSED, "again")])),
        "connection_refused",
        "connection refused",
        id="refused on every address",
    ),
    pytest.param(
        connect_error(ExceptionGroup("attempts", [REFUSED, OSError(errno.EHOSTUNREACH, "no route")])),
        "connect_failed",
        "connection failed",
        id="addresses failing differently",
    ),
    pytest.param(
        connect_error(OSError(errno.EHOSTUNREACH, "no route")), "unreachable", "no route to host", id="unreachable"
    ),
    pytest.param(
        connect_error(OSError(errno.EACCES, "denied")), "connect_failed", "connection failed (EACCES)", id="other"
    ),
    pytest.param(
        connect_error(socket.gaierror(-2, "Name or service not known")), "dns_failure", "DNS lookup failed", id="DNS"
    ),
    pytest.param(
        chained(httpx.ConnectError("wrong version"), ssl_error("WRONG_VERSION_NUMBER")),
        "tls_failure",
        "TLS handshake failed (WRONG_VERSION_NUMBER)",
        id="TLS",
    ),
    pytest.param(
        chained(httpx.ConnectError("verify failed"), ssl.SSLCertVerificationError(1, "self-signed")),
        "tls_failure",
        "TLS handshake failed",
        id="certificate",
    ),
    pytest.param(httpx.ConnectError("no cause"), "connect_failed", "connection failed", id="no cause given"),
]


@pytest.mark.parametrize(("exc", "cause", "what"), HTTPX_CONNECT_FAILURES)
def test_httpx_connect_failures_read_as_aiohttps(exc: BaseException, cause: str, what: str) -> None:
    error = httpx_transport_error("p", ADDRESS, exc, in_body=False)
    assert (type(error), error.reason, error.message) == (
        UpstreamUnavailable,
        "UPSTREAM_UNAVAILABLE",
        f"cannot connect to upstream p at {ADDRESS}: {what}",
    )
    assert (error.metadata["cause"], error.metadata["upstream_address"], error.provider) == (cause, ADDRESS, "p")


@pytest.mark.parametrize(
    ("exc", "in_body", "streaming", "kind", "reason", "cause", "message"),
    [
        pytest.param(
            httpx.ConnectTimeout("connect"),
            False,
            False,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "connect_timeout",
            f"cannot connect to upstream p at {ADDRESS}: timed out while connecting",
            id="connect timeout",
        ),
        pytest.param(
            httpx.PoolTimeout("pool"),
            False,
            False,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "connect_timeout",
            f"cannot connect to upstream p at {ADDRESS}: timed out while connecting",
            id="pool timeout",
        ),
        pytest.param(
            httpx.ReadTimeout("read"),
            True,
            True,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "read_timeout",
            f"upstream p at {ADDRESS} timed out while waiting for data",
            id="read timeout",
        ),
        pytest.param(
            httpx.WriteTimeout("write"),
            False,
            False,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "read_timeout",
            f"upstream p at {ADDRESS} timed out while waiting for data",
            id="write timeout",
        ),
        pytest.param(
            TimeoutError(),
            True,
            True,
            UpstreamTimeout,
            "UPSTREAM_TIMEOUT",
            "deadline",
            f"upstream p at {ADDRESS} did not answer before the call's deadline",
            id="whole-call limit",
        ),
        pytest.param(
            chained(httpx.ReadError("reset"), ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")),
            False,
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_reset",
            f"upstream p at {ADDRESS} reset the connection",
            id="reset before the answer",
        ),
        pytest.param(
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            False,
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_closed",
            f"upstream p at {ADDRESS} closed the connection",
            id="closed before the answer",
        ),
        pytest.param(
            httpx.RemoteProtocolError("illegal status line: bytearray(b'SSH-2.0-OpenSSH_9.6')"),
            False,
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "protocol_error",
            f"upstream p at {ADDRESS} did not answer in HTTP",
            id="not HTTP",
        ),
        pytest.param(
            httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
            True,
            True,
            UpstreamUnavailable,
            "UPSTREAM_STREAM_INTERRUPTED",
            "body_cut",
            f"upstream p at {ADDRESS} cut the body short mid-stream",
            id="body cut mid-stream",
        ),
        pytest.param(
            chained(httpx.ReadError("reset"), ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")),
            True,
            True,
            UpstreamUnavailable,
            "UPSTREAM_STREAM_INTERRUPTED",
            "body_cut",
            f"upstream p at {ADDRESS} cut the body short mid-stream",
            id="reset mid-stream",
        ),
        pytest.param(
            httpx.ReadError("closed"),
            True,
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "body_cut",
            f"upstream p at {ADDRESS} cut the body short",
            id="cut while a whole body is read",
        ),
        pytest.param(
            httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
            False,
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_failed",
            f"upstream p at {ADDRESS} failed",
            id="any other httpx error",
        ),
        pytest.param(
            httpx.InvalidURL("Invalid port: 'port'"),
            False,
            False,
            UpstreamUnavailable,
            "UPSTREAM_UNAVAILABLE",
            "connection_failed",
            f"upstream p at {ADDRESS} failed",
            id="a URL httpx cannot send to",
        ),
    ],
)
def test_httpx_failures_read_as_aiohttps(
    exc: BaseException,
    in_body: bool,
    streaming: bool,
    kind: type[UpstreamError],
    reason: str,
    cause: str,
    message: str,
) -> None:
    error = httpx_transport_error("p", ADDRESS, exc, in_body=in_body, streaming=streaming)
    assert (type(error), error.reason, error.message) == (kind, reason, message)
    assert (error.metadata["cause"], error.metadata["upstream_address"], error.provider) == (cause, ADDRESS, "p")


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:9/v1", "127.0.0.1:9"),
        ("https://api.openai.com/v1", "api.openai.com:443"),
        ("http://upstream.test", "upstream.test:80"),
        ("https://user:s3cret-pass@api.example.com:8443/v1?key=s3cret-key#frag", "api.example.com:8443"),
        ("http://[::1]:8080/v1", "[::1]:8080"),
        ("http://upstream.test:port/v1", "upstream.test"),
    ],
)
def test_the_address_is_host_and_port_only(url: str, address: str) -> None:
    assert address_of(url) == address


# On loopback: real sockets, the failures as a real upstream produces them, through either transport:
# both must say the same.

TRANSPORTS: dict[str, type[AiohttpTransport] | type[HttpxTransport]] = {
    "aiohttp": AiohttpTransport,
    "httpx": HttpxTransport,
}


@pytest.fixture(params=sorted(TRANSPORTS))
def transport_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def post(transport_name: str) -> Poster:
    def make(base_url: str) -> Transport:
        return TRANSPORTS[transport_name]("p", base_url, {"content-type": "application/json"}, max_connections=4)

    return Poster(make)


class Poster:
    """Streams one chat completion through a transport and returns the error it ended with."""

    def __init__(self, make: Callable[[str], Transport]) -> None:
        self._make = make

    async def __call__(self, base_url: str, timeouts: Timeouts = TIMEOUTS, model: str = "gpt-test") -> UpstreamError:
        return await post_through(self._make(base_url), timeouts, model)


async def post_through(transport: Transport, timeouts: Timeouts, model: str) -> UpstreamError:
    body = f'{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}'.encode()
    try:
        response = await transport.post("/chat/completions", body, timeouts)
        try:
            async for _ in response:
                pass
        finally:
            await response.aclose()
    except UpstreamError as error:
        return error
    finally:
        await transport.aclose()
    raise AssertionError("the call succeeded")


async def test_a_refused_port_says_connection_refused_and_where(post: Poster) -> None:
    async with refused_port() as base_url:
        error = await post(base_url)
    address = base_url.removeprefix("http://").removesuffix("/v1")
    assert (type(error), error.reason) == (UpstreamUnavailable, "UPSTREAM_UNAVAILABLE")
    assert error.message == f"cannot connect to upstream p at {address}: connection refused"
    assert (error.metadata["cause"], error.metadata["upstream_address"]) == ("connection_refused", address)


async def test_userinfo_and_query_of_the_base_url_never_reach_the_error(post: Poster) -> None:
    async with refused_port() as base_url:
        secret_url = base_url.replace("http://", "http://user:s3cret-pass@") + "?key=s3cret-key"
        error = await post(secret_url)
    assert error.metadata["cause"] == "connection_refused"
    assert "s3cret" not in error.message + repr(error.metadata)


async def test_tls_to_a_plaintext_server_is_a_tls_failure(post: Poster) -> None:
    async with plaintext_server() as base_url:
        error = await post(base_url)
    assert (type(error), error.reason, error.metadata["cause"]) == (
        UpstreamUnavailable,
        "UPSTREAM_UNAVAILABLE",
        "tls_failure",
    )
    assert error.metadata["tls_error"] == "WRONG_VERSION_NUMBER"
    assert "TLS handshake failed (WRONG_VERSION_NUMBER)" in error.message


async def test_an_untrusted_certificate_is_a_tls_failure(post: Poster, tls_files: CertFiles) -> None:
    async with untrusted_tls_server(tls_files.server_cert, tls_files.server_key) as base_url:
        error = await post(base_url)
    assert (error.metadata["cause"], error.metadata["tls_error"]) == ("tls_failure", "CERTIFICATE_VERIFY_FAILED")
    assert error.message.endswith(": TLS handshake failed (CERTIFICATE_VERIFY_FAILED)")


async def test_a_server_that_never_answers_is_a_read_timeout(post: Poster) -> None:
    async with silent_server() as (base_url, silent):
        error = await post(base_url, Timeouts(pool_s=30.0, connect_s=30.0, read_s=0.05, total_s=60.0))
        assert silent.accepted.is_set()
    assert (type(error), error.reason) == (UpstreamTimeout, "UPSTREAM_TIMEOUT")
    assert (error.metadata["cause"], error.metadata["phase"]) == ("read_timeout", "waiting for data")


async def test_an_unresolvable_name_is_a_dns_failure(post: Poster) -> None:
    # .invalid never resolves (RFC 6761); the resolver answers at once, and the generous limits below
    # let even a slow resolver give its answer rather than a timeout.
    error = await post("http://nonexistent.invalid/v1")
    assert (type(error), error.metadata["cause"], error.metadata["upstream_address"]) == (
        UpstreamUnavailable,
        "dns_failure",
        "nonexistent.invalid:80",
    )
    assert error.message == "cannot connect to upstream p at nonexistent.invalid:80: DNS lookup failed"


@pytest.mark.parametrize(
    ("model", "reason", "cause"),
    [
        ("fault-reset-before", "UPSTREAM_UNAVAILABLE", "connection_reset"),
        ("fault-reset-mid", "UPSTREAM_STREAM_INTERRUPTED", "body_cut"),
    ],
)
async def test_resets_before_and_during_the_answer(post: Poster, model: str, reason: str, cause: str) -> None:
    async with FakeOpenAIUpstream() as upstream:
        error = await post(upstream.base_url, model=model)
    assert (type(error), error.reason, error.metadata["cause"]) == (UpstreamUnavailable, reason, cause)


async def test_a_call_past_its_whole_call_limit_is_a_deadline(post: Poster) -> None:
    # The read limit is generous: only the whole-call limit (which httpx has not: an asyncio deadline) can end it.
    async with silent_server() as (base_url, silent):
        error = await post(base_url, Timeouts(pool_s=30.0, connect_s=30.0, read_s=30.0, total_s=0.05))
        assert silent.accepted.is_set()
    assert (type(error), error.reason) == (UpstreamTimeout, "UPSTREAM_TIMEOUT")
    assert (error.metadata["cause"], error.metadata["phase"]) == ("deadline", "waiting for data")
    assert error.message == f"upstream p at {base_url.removeprefix('http://').removesuffix('/v1')} did not answer " + (
        "before the call's deadline"
    )


async def test_a_deadline_mid_body_is_a_deadline_too(transport_name: str) -> None:
    # 200 headers, then silence: the limit runs out while the body is read chunk by chunk.
    async with FakeOpenAIUpstream() as upstream:
        transport = TRANSPORTS[transport_name]("p", upstream.base_url, {}, max_connections=4)
        timeouts = Timeouts(pool_s=30.0, connect_s=30.0, read_s=30.0, total_s=0.2)
        error = await post_through(transport, timeouts, "fault-stall")
        await upstream.wait_for_disconnect(timeout=5.0)
    assert (type(error), error.metadata["cause"]) == (UpstreamTimeout, "deadline")


async def read_stream(transport: Transport, model: str, chunks: int | None = None, until: bytes = b"") -> bytes:
    """`model`'s stream: all of it, its first `chunks` reads, or up to `until` (then the response is
    abandoned, as the gateway abandons it after the end event)."""
    body = f'{{"model":"{model}","messages":[{{"role":"user","content":"a b c"}}],"stream":true}}'.encode()
    response = await transport.post("/chat/completions", body, TIMEOUTS)
    received = b""
    try:
        assert (response.status, response.headers["Content-Type"].split(";")[0]) == (200, "text/event-stream")
        async for chunk in response:
            received += chunk
            if chunks is not None and (chunks := chunks - 1) == 0:
                break
            if until and until in received:
                break
    finally:
        await response.aclose()
    return received


async def test_a_body_read_to_its_end_gives_the_connection_back_to_the_pool(transport_name: str) -> None:
    async with FakeOpenAIUpstream() as upstream:
        transport = TRANSPORTS[transport_name]("p", upstream.base_url, {}, max_connections=4)
        try:
            for _ in range(3):
                assert (await read_stream(transport, "echo")).endswith(b"data: [DONE]\n\n")
        finally:
            await transport.aclose()
        assert (upstream.connections_accepted, upstream.disconnects) == (1, [])


async def test_a_requests_own_headers_go_beside_the_providers_and_only_on_that_request(transport_name: str) -> None:
    async with FakeOpenAIUpstream() as upstream:
        transport = TRANSPORTS[transport_name]("p", upstream.base_url, {"x-provider": "p"}, max_connections=4)
        body = b'{"model":"echo","messages":[{"role":"user","content":"a"}],"stream":true}'
        try:
            for headers in ({"x-request-id": "call-1", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, None):
                response = await transport.post("/chat/completions", body, TIMEOUTS, headers)
                try:
                    assert response.status == 200
                    async for _ in response:
                        pass
                finally:
                    await response.aclose()
        finally:
            await transport.aclose()
    first, second = (request.headers for request in upstream.requests)
    assert (first["x-provider"], first["x-request-id"], first["traceparent"][:3]) == ("p", "call-1", "00-")
    assert second["x-provider"] == "p"
    assert "x-request-id" not in second
    assert "traceparent" not in second


async def test_an_abandoned_body_closes_the_connection(transport_name: str) -> None:
    # Closing tells the upstream to stop generating; the next call opens a new connection.
    async with FakeOpenAIUpstream() as upstream:
        transport = TRANSPORTS[transport_name]("p", upstream.base_url, {}, max_connections=4)
        try:
            assert await read_stream(transport, "slow-tokens-100", chunks=1)
            disconnect = await upstream.wait_for_disconnect(timeout=5.0)
            assert await read_stream(transport, "echo")
        finally:
            await transport.aclose()
        assert (disconnect.model, upstream.connections_accepted) == ("slow-tokens-100", 2)


async def test_a_body_whose_end_has_arrived_goes_back_to_the_pool_when_its_reader_stops_at_the_last_event(
    transport_name: str,
) -> None:
    # The gateway stops reading at the end event; the body's own end (the last chunk of the chunked
    # encoding) came with it, so the connection is whole and is reused.
    async with FakeOpenAIUpstream() as upstream:
        transport = TRANSPORTS[transport_name]("p", upstream.base_url, {}, max_connections=4)
        try:
            for _ in range(3):
                assert (await read_stream(transport, "echo", until=b"data: [DONE]")).endswith(b"data: [DONE]\n\n")
        finally:
            await transport.aclose()
        assert (upstream.connections_accepted, upstream.disconnects) == (1, [])


async def test_no_url_secret_reaches_the_log_through_either_transport(
    transport_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx logs each request's URL at INFO on its own; the transport keeps it out of the gateway's log.
    caplog.set_level(logging.DEBUG)
    async with FakeOpenAIUpstream() as upstream:
        secret_url = upstream.base_url.replace("http://", "http://user:s3cret-pass@")
        transport = TRANSPORTS[transport_name]("p", secret_url, {}, max_connections=4)
        try:
            await read_stream(transport, "echo")
        finally:
            await transport.aclose()
    assert "s3cret" not in caplog.text


async def test_a_proxy_in_the_environment_is_not_used(transport_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would see the upstream key: only an explicit setting may send calls through one.
    async with refused_port() as proxy, FakeOpenAIUpstream() as upstream:
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(variable, proxy.removesuffix("/v1"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        transport = TRANSPORTS[transport_name]("p", upstream.base_url, {}, max_connections=4)
        try:
            assert (await read_stream(transport, "echo")).endswith(b"data: [DONE]\n\n")
        finally:
            await transport.aclose()
        assert len(upstream.requests) == 1


async def test_cookies_an_upstream_sets_are_never_sent_back(transport_name: str) -> None:
    # One caller's session cookie must not ride along on the next caller's call.
    heads: list[bytes] = []
    hung_up = asyncio.Event()  # the handler has closed its end, so no socket outlives the test's loop

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):  # the client hangs up
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                heads.append(head)
                await reader.readexactly(int(head.split(b"content-length:")[1].split(b"\r\n")[0]))
                writer.write(b"HTTP/1.1 200 OK\r\nset-cookie: session=abc; Path=/\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()
        await writer.wait_closed()
        hung_up.set()

    async with serving(answer) as server:
        base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        transport = TRANSPORTS[transport_name]("p", base_url, {}, max_connections=4)
        try:
            for _ in range(2):
                response = await transport.post("/chat/completions", b"{}", TIMEOUTS)
                try:
                    assert (response.status, await response.read()) == (200, b"ok")
                finally:
                    await response.aclose()
        finally:
            await transport.aclose()
        await hung_up.wait()
    assert len(heads) == 2
    assert not any(b"\r\ncookie:" in head for head in heads)


async def test_a_compressed_body_is_handed_over_as_it_came_never_inflated(transport_name: str) -> None:
    # The gateway asks for identity; a gzip body (here a small bomb) reaches the caller still compressed, so
    # that it is refused (providers/http.py) at its size on the wire, through either transport.
    bomb = gzip.compress(b"\0" * 4_000_000)
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        heads.append(head)
        await reader.readexactly(int(head.split(b"content-length:")[1].split(b"\r\n")[0]))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            + f"content-length: {len(bomb)}\r\n\r\n".encode()
            + bomb
        )
        await writer.drain()

    async with serving(answer) as server:
        base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        transport = TRANSPORTS[transport_name]("p", base_url, {"accept-encoding": "gzip"}, max_connections=4)
        try:
            response = await transport.post("/chat/completions", b"{}", TIMEOUTS)
            try:
                assert (response.status, response.headers["content-encoding"]) == (200, "gzip")
                assert await response.read() == bomb
            finally:
                await response.aclose()
        finally:
            await transport.aclose()
    [head] = heads
    assert b"\r\naccept-encoding: identity\r\n" in head  # a provider's header cannot ask for compression


async def test_after_a_burst_at_most_max_idle_connections_stay_open(transport_name: str) -> None:
    burst, idle = 6, 2
    arrived: list[asyncio.StreamWriter] = []
    all_arrived = asyncio.Event()
    closed = 0
    some_closed = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            await reader.readexactly(int(head.split(b"content-length:")[1].split(b"\r\n")[0]))
            arrived.append(writer)
            if len(arrived) == burst:
                all_arrived.set()
            await all_arrived.wait()  # every call holds its own connection: a burst of `burst` connections
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read()  # kept alive until the client closes it
        closed += 1
        if closed == burst - idle:
            some_closed.set()

    async with serving(answer) as server:
        base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        transport = TRANSPORTS[transport_name](
            "p", base_url, {}, max_connections=burst, max_idle_connections=idle, keepalive_expiry_s=600.0
        )

        async def call() -> bytes:
            response = await transport.post("/chat/completions", b"{}", TIMEOUTS)
            try:
                return await response.read()
            finally:
                await response.aclose()

        try:
            assert await asyncio.gather(*(call() for _ in range(burst))) == [b"ok"] * burst
            # The connections beyond the idle cap are closed as they come back, not when they expire.
            await asyncio.wait_for(some_closed.wait(), 30.0)
            assert closed == burst - idle
        finally:
            await transport.aclose()


async def test_aiohttp_stops_reading_an_unread_answer_at_its_read_buffer() -> None:
    # A client that stops reading leaves its stream's answer unread: aiohttp pauses the socket once it holds
    # twice `read_buffer_bytes`, so a stream holds about that (plus one socket read), not the whole answer.
    read_buffer = 16 * 1024
    body = b"x" * (16 * 1024 * 1024)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            await reader.readexactly(int(head.split(b"content-length:")[1].split(b"\r\n")[0]))
            writer.write(b"HTTP/1.1 200 OK\r\n" + f"content-length: {len(body)}\r\n\r\n".encode())
            writer.write(body)
            await writer.drain()

    async with serving(answer) as server:
        base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        transport = AiohttpTransport("p", base_url, {}, max_connections=4, read_buffer_bytes=read_buffer)
        try:
            response = await transport.post("/chat/completions", b"{}", TIMEOUTS)
            try:
                # White-box: aiohttp's protocol and stream reader say whether it paused and what it holds.
                protocol = response._response.connection.protocol  # type: ignore[attr-defined]
                if not protocol._reading_paused:
                    paused = asyncio.Event()
                    pause = protocol.pause_reading

                    def pause_and_tell() -> None:
                        pause()
                        paused.set()

                    protocol.pause_reading = pause_and_tell
                    await asyncio.wait_for(paused.wait(), 30.0)
                held = response._content._size  # type: ignore[attr-defined]
                assert 2 * read_buffer < held <= 2 * read_buffer + 256 * 1024  # + one socket read at most
                assert len(await response.read()) == len(body)  # and it reads on when asked
            finally:
                await response.aclose()
        finally:
            await transport.aclose()
