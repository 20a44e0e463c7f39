"""A fake OpenAI-compatible ``/v1/chat/completions`` upstream for tests and benchmarks.

It is a real HTTP/1.1 server on ``127.0.0.1`` built directly on
:func:`asyncio.start_server` (no web framework), so every byte, every delay and
every connection reset is under our control.  It speaks the OpenAI Chat
Completions wire format:

* ``POST /v1/chat/completions`` with a JSON body (``Content-Length`` or
  ``Transfer-Encoding: chunked``; ``Expect: 100-continue`` is honoured).
  HTTP/1.1 keep-alive is supported (several requests per connection).
  Any other path or method gets OpenAI's 404 body
  ``{"error":{"message":"Invalid URL (GET /v1/foo)",...}}``.
* ``"stream": true`` -> ``200``, ``content-type: text/event-stream``,
  ``transfer-encoding: chunked``; every SSE event ``data: {json}\\n\\n`` is one
  HTTP chunk: a role chunk (``"delta":{"role":"assistant","content":""}``), one
  chunk per content piece (``"delta":{"content":"..."}``), a finish chunk
  (``"delta":{}``, ``"finish_reason":"stop"|"length"``), then -- only with
  ``"stream_options":{"include_usage":true}`` -- a usage chunk with
  ``"choices":[]`` (and ``"usage":null`` on all earlier chunks), then
  ``data: [DONE]``.
* otherwise -> ``200`` ``application/json`` ``chat.completion`` object with
  ``usage``.
* Errors use OpenAI's body ``{"error":{"message","type","param","code"}}``.
  Request validation like the real API: non-JSON body / missing ``model`` /
  missing ``messages`` / ``stream_options`` without ``stream: true`` -> 400.
* If the server was given ``api_key`` (CLI: ``--api-key`` or env var
  ``FAKE_OPENAI_REQUIRED_API_KEY``), requests without
  ``Authorization: Bearer <api_key>`` get 401 ``invalid_api_key`` (checked
  before anything else, like the real API).

Behaviour is selected by the request's ``model`` so the server is stateless:

``<any ordinary name>`` (e.g. ``gpt-test``)
    Echo the text of the LAST ``user`` message, one content piece per word;
    whitespace is kept so that concatenating the deltas gives the original
    text exactly (``"a b c"`` -> ``"a"``, ``" b"``, ``" c"``; trailing
    whitespace is glued to the last piece).  Content-part lists contribute their
    ``text`` parts joined with ``"\\n"``.  ``usage.prompt_tokens`` = number of
    whitespace-separated words over all messages' contents,
    ``completion_tokens`` = number of content pieces.  ``max_tokens`` (or
    ``max_completion_tokens``) smaller than the piece count truncates to that
    many pieces with ``finish_reason: "length"``.
``tokens-N``
    N pieces ``"t0"``, ``" t1"``, ... ``" t{N-1}"`` (N <= 1,000,000), no delays,
    pre-encoded, written in large batches (benchmark path).  ``max_tokens``
    applies.
``slow-first-token-MS``
    Echo, but wait MS ms before the first content chunk (the headers and role
    chunk go out immediately).  Non-stream: wait MS ms before responding.
``slow-tokens-MS``
    Echo, but wait MS ms between content chunks (flushed one by one).
    Non-stream: wait ``MS * (pieces - 1)`` ms before responding.
``split-bytes``
    Echo, but every byte of the response (status line, headers and body) is
    written with its own ``write()`` + ``drain()`` + loop yield.
``no-usage``
    Echo stream that never sends a usage chunk (and no ``"usage":null``) even
    with ``include_usage``; non-stream responses omit ``"usage"``.
``fault-429`` / ``fault-429-no-retry-after`` / ``fault-429-ms``
    429 rate-limit body (type ``requests``, code ``rate_limit_exceeded``) with
    ``retry-after: 7`` / no retry header / only ``retry-after-ms: 1500``.
``fault-400`` ``fault-401`` ``fault-403`` ``fault-408`` ``fault-500`` ``fault-502`` ``fault-503``
    That HTTP status with an OpenAI error body (see ``_HTTP_FAULTS``).
    ``fault-401`` says ``Incorrect API key provided: sk-fake***1234``.
``fault-reset-before``
    Read the request, then RST the connection (``SO_LINGER`` 0) - no response.
``fault-reset-mid``
    Stream: headers, role chunk, 2 content chunks, then RST.
    Non-stream: headers with the full ``content-length``, the first half of the
    body, then RST.
``fault-cut-mid``
    Stream: role chunk + 2 content chunks, then the terminating ``0`` chunk
    (clean HTTP framing, no finish chunk, no ``[DONE]``; keep-alive kept).
    Non-stream (exception): headers with the full ``content-length``, half of
    the body, then a clean FIN close (an incomplete body).
``fault-inband-{error|ratelimit|invalid}-{before|after}``
    Stream: 200 SSE headers, (``after``: role chunk + 2 content chunks), then
    ``data: {"error":{...}}`` and the end of the body (no ``[DONE]``).  ``error``:
    server_error/overloaded, ``ratelimit``: rate_limit_error/rate_limit_exceeded,
    ``invalid``: invalid_request_error/invalid_value.
    Non-stream (exception): 200 ``application/json`` whose body is the
    ``{"error":{...}}`` object (``before`` and ``after`` are the same).
``fault-malformed``
    Stream: role chunk, then ``data: {"choices":[{"delta":{"content":"x"``
    + blank line, then ``data: [DONE]``.  Non-stream: 200 with the first half of
    the JSON body (correct ``content-length``).
``fault-stall``
    Send the 200 headers (SSE for streams; ``application/json`` + chunked for
    non-stream) and then nothing until the client disconnects.

The mid-stream faults use the first two echo pieces of the last user message,
padded with ``"t0"``/``" t1"`` style pieces when it has fewer than two words.
Model names starting with ``fault-``, ``tokens-``, ``slow-first-token-`` or
``slow-tokens-`` that do not parse get 404 ``model_not_found`` (catches typos).

Observability (on the server object the test holds): ``requests``
(:class:`RecordedRequest`, appended as soon as a request is parsed),
``disconnects`` (:class:`Disconnect`, whenever the client goes away - EOF,
reset or failed write - before a response finished, including while stalling
or sleeping), ``open_connections``, ``connections_accepted``, and the helpers
:meth:`FakeOpenAIUpstream.wait_for_disconnect` /
:meth:`FakeOpenAIUpstream.wait_for_requests`.  A client that half-closes its
socket (``shutdown(SHUT_WR)``) during a response counts as a disconnect.

CLI (for benchmarks in a separate process)::

    python -m tests.fakes.openai_upstream --port 0 [--host 127.0.0.1] [--api-key KEY]

prints exactly one line ``PORT <n>`` (flushed) once listening, serves until
SIGTERM/SIGINT, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import functools
import http
import itertools
import json
import logging
import os
import re
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Disconnect", "FakeOpenAIUpstream", "RecordedRequest"]

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
SYSTEM_FINGERPRINT = "fp_fake0upstrm"
FAKE_401_KEY = "sk-fake***1234"
API_KEY_ENV = "FAKE_OPENAI_REQUIRED_API_KEY"

_MAX_HEAD = 64 * 1024
_MAX_BODY = 32 * 1024 * 1024
_MAX_TOKENS_N = 1_000_000
_FLUSH_AT = 64 * 1024


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    """One parsed HTTP request as received by the fake."""

    method: str
    path: str  # request target as sent, including any query string
    headers: dict[str, str]  # lowercase names; repeated headers joined by ", "
    body: Any  # parsed JSON, or None when the body was not valid JSON
    raw_body: bytes
    connection_id: int
    time: float  # time.monotonic() when parsed

    @property
    def model(self) -> str | None:
        if isinstance(self.body, dict):
            model = self.body.get("model")
            if isinstance(model, str):
                return model
        return None


@dataclass(frozen=True)
class Disconnect:
    """The client went away before a response finished."""

    model: str | None
    time: float  # time.monotonic() when the EOF/reset/failed write was seen
    connection_id: int


# --------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class _ErrorSpec:
    status: int
    message: str
    type: str
    code: str | None
    headers: tuple[tuple[str, str], ...] = ()


_RATE_LIMIT_MSG = (
    "Rate limit reached for gpt-test in organization org-fake on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 7s. "
    "Visit https://platform.openai.com/account/rate-limits to learn more."
)
_RATE_LIMIT_HEADERS = (
    ("x-ratelimit-limit-requests", "3"),
    ("x-ratelimit-remaining-requests", "0"),
)

_HTTP_FAULTS: dict[str, _ErrorSpec] = {
    "fault-429": _ErrorSpec(
        429,
        _RATE_LIMIT_MSG,
        "requests",
        "rate_limit_exceeded",
        (("retry-after", "7"), *_RATE_LIMIT_HEADERS),
    ),
    "fault-429-no-retry-after": _ErrorSpec(
        429, _RATE_LIMIT_MSG, "requests", "rate_limit_exceeded", _RATE_LIMIT_HEADERS
    ),
    "fault-429-ms": _ErrorSpec(
        429,
        _RATE_LIMIT_MSG,
        "requests",
        "rate_limit_exceeded",
        (("retry-after-ms", "1500"), *_RATE_LIMIT_HEADERS),
    ),
    "fault-400": _ErrorSpec(
        400,
        "Invalid value for 'messages': this is a fake bad request.",
        "invalid_request_error",
        "invalid_value",
    ),
    "fault-401": _ErrorSpec(
        401,
        f"Incorrect API key provided: {FAKE_401_KEY}. "
        "You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "fault-403": _ErrorSpec(
        403,
        "Country, region, or territory not supported",
        "request_forbidden",
        "unsupported_country_region_territory",
    ),
    "fault-408": _ErrorSpec(408, "Request timed out.", "timeout", "request_timeout"),
    "fault-500": _ErrorSpec(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    "fault-502": _ErrorSpec(502, "Bad gateway.", "server_error", "bad_gateway"),
    "fault-503": _ErrorSpec(
        503,
        "The server is overloaded or not ready yet.",
        "server_error",
        "service_unavailable",
    ),
}

_INBAND_ERRORS: dict[str, tuple[str, str, str]] = {
    "error": ("The server is overloaded", "server_error", "overloaded"),
    "ratelimit": (
        "Rate limit reached for requests. Please try again later.",
        "rate_limit_error",
        "rate_limit_exceeded",
    ),
    "invalid": ("Invalid request: this is a fake error.", "invalid_request_error", "invalid_value"),
}

_Kind = Literal[
    "echo",
    "tokens",
    "http-error",
    "reset-before",
    "reset-mid",
    "cut-mid",
    "inband",
    "malformed",
    "stall",
]


@dataclass(frozen=True)
class _Behaviour:
    kind: _Kind
    tokens: int = 0
    first_delay: float = 0.0
    gap: float = 0.0
    split: bool = False
    usage: bool = True
    error: _ErrorSpec | None = None
    inband: tuple[str, str, str] | None = None
    inband_after: bool = False


_ECHO = _Behaviour("echo")
_RESERVED_PREFIXES = ("fault-", "tokens-", "slow-first-token-", "slow-tokens-")


@functools.lru_cache(maxsize=1024)
def _behaviour(model: str) -> _Behaviour | None:
    """Map a model name to a behaviour; None = reserved name that does not parse."""
    if model in _HTTP_FAULTS:
        return _Behaviour("http-error", error=_HTTP_FAULTS[model])
    simple: dict[str, _Behaviour] = {
        "fault-reset-before": _Behaviour("reset-before"),
        "fault-reset-mid": _Behaviour("reset-mid"),
        "fault-cut-mid": _Behaviour("cut-mid"),
        "fault-malformed": _Behaviour("malformed"),
        "fault-stall": _Behaviour("stall"),
        "split-bytes": _Behaviour("echo", split=True),
        "no-usage": _Behaviour("echo", usage=False),
    }
    if model in simple:
        return simple[model]
    m = re.fullmatch(r"fault-inband-(error|ratelimit|invalid)-(before|after)", model)
    if m:
        return _Behaviour("inband", inband=_INBAND_ERRORS[m.group(1)], inband_after=m.group(2) == "after")
    m = re.fullmatch(r"tokens-([0-9]{1,7})", model)
    if m:
        n = int(m.group(1))
        return _Behaviour("tokens", tokens=n) if n <= _MAX_TOKENS_N else None
    m = re.fullmatch(r"slow-first-token-([0-9]{1,7})", model)
    if m:
        return _Behaviour("echo", first_delay=int(m.group(1)) / 1000.0)
    m = re.fullmatch(r"slow-tokens-([0-9]{1,7})", model)
    if m:
        return _Behaviour("echo", gap=int(m.group(1)) / 1000.0)
    if model.startswith(_RESERVED_PREFIXES):
        return None
    return _ECHO


# --------------------------------------------------------------------------- encoding helpers


def _jstr(s: str) -> bytes:
    """Compact JSON string literal, UTF-8 (falls back to ASCII escapes for lone surrogates)."""
    try:
        return json.dumps(s, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(s).encode()


_TOKEN_JSON: list[bytes] = []


def _token_json(n: int) -> list[bytes]:
    """Pre-encoded JSON literals for "t0", " t1", ... (grown lazily, shared)."""
    while len(_TOKEN_JSON) < n:
        i = len(_TOKEN_JSON)
        _TOKEN_JSON.append(b'"t0"' if i == 0 else b'" t%d"' % i)
    return _TOKEN_JSON[:n]


def _token_texts(n: int) -> list[str]:
    return ["t0" if i == 0 else f" t{i}" for i in range(n)]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


_PIECE_RE = re.compile(r"\s*\S+")


def _split_pieces(text: str) -> list[str]:
    pieces: list[str] = _PIECE_RE.findall(text)
    used = sum(len(p) for p in pieces)
    rest = text[used:]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces = [rest]
    return pieces


def _frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


_date_cache: list[Any] = [0, b""]


def _http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True).encode()
    value: bytes = _date_cache[1]
    return value


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(14)


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}, indent=2).encode()


def _inband_event(spec: tuple[str, str, str]) -> bytes:
    message, type_, code = spec
    err = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + json.dumps(err, separators=(",", ":")).encode() + b"\n\n"


# --------------------------------------------------------------------------- connection plumbing


class _ClientGone(Exception):
    """The peer closed/reset the connection while we were responding."""


class _Aborted(Exception):
    """We deliberately killed the connection (RST or cut)."""


class _Framing(Exception):
    """Malformed HTTP request; answer 400/413/431 and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Conn:
    """A connection: a pump task reads everything into ``buf`` and notices EOF at any time."""

    def __init__(self, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.cid = cid
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.eof = False
        self.eof_time: float | None = None
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._data = asyncio.Event()
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.buf += data
                self._data.set()
                if len(self.buf) > _MAX_BODY + _MAX_HEAD:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self.eof_time = time.monotonic()
            if not self.gone.done():
                self.gone.set_result(None)
            self._data.set()

    async def _wait_data(self) -> None:
        if self.eof:
            raise _ClientGone
        self._data.clear()
        await self._data.wait()

    async def read_until(self, delim: bytes, limit: int) -> bytes | None:
        """Bytes up to and including delim; None on EOF with nothing buffered."""
        start = 0
        while True:
            idx = self.buf.find(delim, start)
            if idx >= 0:
                end = idx + len(delim)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise _Framing(431, "Request header fields too large.")
            start = max(0, len(self.buf) - len(delim) + 1)
            if self.eof:
                if not self.buf:
                    return None
                raise _ClientGone
            await self._wait_data()

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._wait_data()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    def rst(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()


class _Out:
    """Buffered response writer that knows about disconnects and split-bytes mode."""

    def __init__(self, conn: _Conn, split: bool) -> None:
        self.conn = conn
        self.split = split
        self.pending: list[bytes] = []
        self.size = 0

    def raw(self, data: bytes) -> None:
        self.pending.append(data)
        self.size += len(data)

    def event(self, payload: bytes) -> None:
        frame = _frame(payload)
        self.pending.append(frame)
        self.size += len(frame)

    async def maybe_flush(self) -> None:
        if self.size >= _FLUSH_AT:
            await self.flush()

    async def flush(self) -> None:
        conn = self.conn
        if conn.gone.done():
            raise _ClientGone
        data = b"".join(self.pending)
        self.pending.clear()
        self.size = 0
        if not data:
            return
        writer = conn.writer
        try:
            if self.split:
                for i in range(len(data)):
                    if conn.gone.done():
                        raise _ClientGone
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise _ClientGone from exc

    async def sleep(self, seconds: float) -> None:
        """Flush, then wait ``seconds`` - raising _ClientGone as soon as the peer leaves."""
        await self.flush()
        if seconds <= 0:
            return
        done, _ = await asyncio.wait({self.conn.gone}, timeout=seconds)
        if done:
            raise _ClientGone

    async def wait_gone(self) -> None:
        await self.flush()
        await self.conn.gone
        raise _ClientGone

    async def end_chunked(self) -> None:
        self.raw(b"0\r\n\r\n")
        await self.flush()

    async def reset(self) -> None:
        """Deliver what was written, then RST the connection."""
        await self.flush()
        transport = self.conn.writer.transport
        deadline = time.monotonic() + 2.0
        while transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:
            if self.conn.gone.done():
                raise _ClientGone
            await asyncio.sleep(0.001)
        # Give the peer a moment to read the bytes before the RST arrives.
        await self.sleep(0.005)
        self.conn.rst()
        raise _Aborted

    async def close_clean(self) -> None:
        """Deliver what was written, then close with a FIN."""
        await self.flush()
        writer = self.conn.writer
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        raise _Aborted


# --------------------------------------------------------------------------- the server


class FakeOpenAIUpstream:
    """Fake OpenAI Chat Completions upstream.  See the module docstring."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> None:
        self._host = host
        self._port = port
        self._api_key = api_key
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._open = 0
        self._accepted = 0
        self._changed: asyncio.Event | None = None
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[Disconnect] = []

    # ----- lifecycle

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=_MAX_HEAD * 2, backlog=1024
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    async def __aenter__(self) -> FakeOpenAIUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----- properties / helpers for tests

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/v1"

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def connections_accepted(self) -> int:
        return self._accepted

    def clear(self) -> None:
        """Forget recorded requests and disconnects."""
        self.requests.clear()
        self.disconnects.clear()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait_until(self, pred: Callable[[], bool], timeout: float) -> None:
        async def loop() -> None:
            while not pred():
                event = self._changed
                if event is None:
                    raise RuntimeError("server not started")
                await event.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_for_disconnect(
        self, timeout: float = 1.0, *, model: str | None = None, count: int = 1
    ) -> Disconnect:
        """Wait until ``count`` disconnects (optionally for ``model``) were seen; return the last.

        Raises TimeoutError otherwise.
        """

        def matching() -> list[Disconnect]:
            return [d for d in self.disconnects if model is None or d.model == model]

        await self._wait_until(lambda: len(matching()) >= count, timeout)
        return matching()[count - 1]

    async def wait_for_requests(self, count: int = 1, timeout: float = 1.0) -> RecordedRequest:
        """Wait until ``count`` requests were recorded; return the ``count``-th one."""
        await self._wait_until(lambda: len(self.requests) >= count, timeout)
        return self.requests[count - 1]

    # ----- connection handling

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        cid = next(self._ids)
        self._open += 1
        self._accepted += 1
        conn = _Conn(cid, reader, writer)
        close_cleanly = True
        try:
            while True:
                try:
                    req = await self._read_request(conn)
                except _Framing as exc:
                    with contextlib.suppress(_ClientGone):
                        await self._send_error(
                            _Out(conn, False),
                            exc.status,
                            exc.message,
                            "invalid_request_error",
                            None,
                            keep_alive=False,
                        )
                    break
                except _ClientGone:
                    break
                if req is None:
                    break
                try:
                    keep = await self._respond(conn, req)
                except _ClientGone:
                    self._record_disconnect(conn, req)
                    close_cleanly = False
                    break
                except _Aborted:
                    close_cleanly = False
                    break
                if not keep:
                    break
        except asyncio.CancelledError:
            close_cleanly = False
        except Exception:
            log.exception("fake upstream: connection handler crashed")
            close_cleanly = False
        finally:
            conn.pump.cancel()
            if close_cleanly:
                writer.close()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
            conn.abort()
            self._open -= 1
            if task is not None:
                self._tasks.discard(task)
            self._notify()

    def _record_disconnect(self, conn: _Conn, req: _Request) -> None:
        model: str | None = None
        with contextlib.suppress(Exception):
            body = json.loads(req.body)
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                model = body["model"]
        when = conn.eof_time if conn.eof_time is not None else time.monotonic()
        self.disconnects.append(Disconnect(model=model, time=when, connection_id=conn.cid))
        self._notify()

    async def _read_request(self, conn: _Conn) -> _Request | None:
        # Tolerate stray CRLFs between requests (RFC 9112 section 2.2).
        while conn.buf[:2] == b"\r\n":
            del conn.buf[:2]
        head = await conn.read_until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            return None
        if head.startswith(b"\r\n"):
            head = head.lstrip(b"\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Framing(400, "Malformed request line.")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _Framing(400, "Malformed header line.")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        conn_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        # HTTP/1.1 defaults to keep-alive, HTTP/1.0 only keeps the connection when asked to.
        keep_alive = "close" not in conn_tokens if version == "HTTP/1.1" else "keep-alive" in conn_tokens
        te = headers.get("transfer-encoding", "").lower()
        chunked = "chunked" in te
        length = 0
        if not chunked and "content-length" in headers:
            raw_len = headers["content-length"].strip()
            if not raw_len.isdigit():
                raise _Framing(400, "Invalid content-length.")
            length = int(raw_len)
            if length > _MAX_BODY:
                raise _Framing(413, "Request entity too large.")
        if chunked and "content-length" in headers:
            keep_alive = False
        has_body = chunked or length > 0
        if has_body and headers.get("expect", "").lower() == "100-continue":
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            body = await self._read_chunked(conn)
        elif length:
            body = await conn.read_exactly(length)
        else:
            body = b""
        req = _Request(method, target, version, headers, body, keep_alive)
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.requests.append(
            RecordedRequest(
                method=method,
                path=target,
                headers=headers,
                body=parsed,
                raw_body=body,
                connection_id=conn.cid,
                time=time.monotonic(),
            )
        )
        self._notify()
        return req

    async def _read_chunked(self, conn: _Conn) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await conn.read_until(b"\r\n", _MAX_HEAD)
            if line is None:
                raise _ClientGone
            size_txt = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError as exc:
                raise _Framing(400, "Invalid chunk size.") from exc
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await conn.read_until(b"\r\n", _MAX_HEAD)
                    if trailer is None:
                        raise _ClientGone
                    if trailer == b"\r\n":
                        return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise _Framing(413, "Request entity too large.")
            data = await conn.read_exactly(size + 2)
            if data[-2:] != b"\r\n":
                raise _Framing(400, "Invalid chunk framing.")
            parts.append(data[:-2])

    # ----- responses

    def _head(
        self,
        status: int,
        content_type: str,
        *,
        length: int | None,
        keep_alive: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        phrase = http.HTTPStatus(status).phrase
        lines = [
            b"HTTP/1.1 %d %b" % (status, phrase.encode()),
            b"date: " + _http_date(),
            b"content-type: " + content_type.encode(),
            b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length,
            b"connection: keep-alive" if keep_alive else b"connection: close",
            b"openai-organization: org-fake",
            b"openai-processing-ms: 1",
            b"openai-version: 2020-10-01",
            b"x-request-id: req_" + secrets.token_hex(16).encode(),
        ]
        if content_type.startswith("text/event-stream"):
            lines.append(b"cache-control: no-cache")
        for name, value in extra:
            lines.append(f"{name}: {value}".encode("latin-1"))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _send_error(
        self,
        out: _Out,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        *,
        keep_alive: bool,
        param: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        body = _error_body(message, type_, code, param)
        out.raw(self._head(status, "application/json", length=len(body), keep_alive=keep_alive, extra=extra))
        out.raw(body)
        await out.flush()
        return keep_alive

    async def _respond(self, conn: _Conn, req: _Request) -> bool:
        keep = req.keep_alive
        out = _Out(conn, False)
        path = req.target.split("?", 1)[0]
        if path.startswith(("http://", "https://")):  # absolute-form target
            path = "/" + path.split("/", 3)[-1] if path.count("/") >= 3 else "/"
        if path != CHAT_PATH or req.method != "POST":
            return await self._send_error(
                out,
                404,
                f"Invalid URL ({req.method} {path})",
                "invalid_request_error",
                None,
                keep_alive=keep,
            )

        if self._api_key is not None:
            auth = req.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return await self._send_error(
                    out,
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                    "invalid_api_key",
                    keep_alive=keep,
                )
            if token != self._api_key:
                masked = (token[:3] + "***" + token[-4:]) if len(token) > 8 else "***"
                return await self._send_error(
                    out,
                    401,
                    f"Incorrect API key provided: {masked}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    "invalid_api_key",
                    keep_alive=keep,
                )

        try:
            body: Any = json.loads(req.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return await self._send_error(
                out,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
                "invalid_request_error",
                None,
                keep_alive=keep,
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return await self._send_error(
                out,
                400,
                "you must provide a model parameter",
                "invalid_request_error",
                None,
                keep_alive=keep,
            )
        messages = body.get("messages")
        if not isinstance(messages, list):
            return await self._send_error(
                out,
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "missing_required_parameter",
                param="messages",
                keep_alive=keep,
            )
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        if stream_options is not None and not stream:
            return await self._send_error(
                out,
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error",
                None,
                param="stream_options",
                keep_alive=keep,
            )
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

        beh = _behaviour(model)
        if beh is None:
            return await self._send_error(
                out,
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
                keep_alive=keep,
            )
        if beh.kind == "http-error":
            spec = beh.error
            assert spec is not None
            return await self._send_error(
                out,
                spec.status,
                spec.message,
                spec.type,
                spec.code,
                keep_alive=keep,
                extra=spec.headers,
            )
        if beh.kind == "reset-before":
            conn.rst()
            raise _Aborted

        # ---- content
        prompt_tokens = 0
        last_user = ""
        for msg in messages:
            if isinstance(msg, dict):
                text = _text_of(msg.get("content"))
                prompt_tokens += len(text.split())
                if msg.get("role") == "user":
                    last_user = text
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            max_tokens = None

        pieces_json: list[bytes]
        texts: list[str] | None = None
        if beh.kind == "tokens":
            n = beh.tokens if max_tokens is None else min(beh.tokens, max_tokens)
            pieces_json = _token_json(n)
            finish = "length" if n < beh.tokens else "stop"
        else:
            texts = _split_pieces(last_user)
            if beh.kind in ("reset-mid", "cut-mid", "inband", "malformed"):
                texts = (texts + _token_texts(2)[len(texts) :])[:2]
            finish = "stop"
            if max_tokens is not None and max_tokens < len(texts):
                texts = texts[:max_tokens]
                finish = "length"
            pieces_json = [_jstr(t) for t in texts]

        if beh.split:
            out = _Out(conn, True)
        if stream:
            return await self._stream(out, beh, model, pieces_json, prompt_tokens, finish, include_usage, keep)
        if texts is None:
            texts = _token_texts(len(pieces_json))
        return await self._complete(out, beh, model, texts, prompt_tokens, finish, keep)

    async def _stream(
        self,
        out: _Out,
        beh: _Behaviour,
        model: str,
        pieces: list[bytes],
        prompt_tokens: int,
        finish: str,
        include_usage: bool,
        keep: bool,
    ) -> bool:
        out.raw(self._head(200, "text/event-stream", length=None, keep_alive=keep))
        if beh.kind == "stall":
            await out.wait_gone()
        if beh.kind == "inband" and not beh.inband_after:
            assert beh.inband is not None
            out.event(_inband_event(beh.inband))
            await out.end_chunked()
            return keep

        usage_on = include_usage and beh.usage
        tail = b',"usage":null}\n\n' if usage_on else b"}\n\n"
        prefix = (
            b'data: {"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,'
            b'"system_fingerprint":"%b","choices":'
            % (
                _completion_id().encode(),
                int(time.time()),
                _jstr(model),
                SYSTEM_FINGERPRINT.encode(),
            )
        )
        out.event(
            prefix
            + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            + b'"logprobs":null,"finish_reason":null}]'
            + tail
        )
        if beh.kind == "malformed":
            out.event(b'data: {"choices":[{"delta":{"content":"x"\n\n')
            out.event(b"data: [DONE]\n\n")
            await out.end_chunked()
            return keep
        if beh.first_delay:
            await out.sleep(beh.first_delay)
        content_pre = prefix + b'[{"index":0,"delta":{"content":'
        content_post = b'},"logprobs":null,"finish_reason":null}]' + tail
        for i, piece in enumerate(pieces):
            if i and beh.gap:
                await out.sleep(beh.gap)
            out.event(content_pre + piece + content_post)
            await out.maybe_flush()

        if beh.kind == "reset-mid":
            await out.reset()
        if beh.kind == "cut-mid":
            await out.end_chunked()
            return keep
        if beh.kind == "inband":
            assert beh.inband is not None
            out.event(_inband_event(beh.inband))
            await out.end_chunked()
            return keep

        out.event(prefix + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%b"}]' % finish.encode() + tail)
        if usage_on:
            n = len(pieces)
            out.event(
                prefix
                + b'[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
                % (prompt_tokens, n, prompt_tokens + n)
            )
        out.event(b"data: [DONE]\n\n")
        await out.end_chunked()
        return keep

    async def _complete(
        self,
        out: _Out,
        beh: _Behaviour,
        model: str,
        texts: list[str],
        prompt_tokens: int,
        finish: str,
        keep: bool,
    ) -> bool:
        if beh.kind == "stall":
            out.raw(self._head(200, "application/json", length=None, keep_alive=keep))
            await out.wait_gone()
        delay = beh.first_delay + beh.gap * max(0, len(texts) - 1)
        if delay:
            await out.sleep(delay)
        if beh.kind == "inband":
            assert beh.inband is not None
            message, type_, code = beh.inband
            body = _error_body(message, type_, code)
            out.raw(self._head(200, "application/json", length=len(body), keep_alive=keep))
            out.raw(body)
            await out.flush()
            return keep

        n = len(texts)
        obj: dict[str, Any] = {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(texts), "refusal": None},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
        }
        if beh.usage:
            obj["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            }
        obj["system_fingerprint"] = SYSTEM_FINGERPRINT
        body = json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")
        if beh.kind in ("reset-mid", "cut-mid"):
            out.raw(self._head(200, "application/json", length=len(body), keep_alive=False))
            out.raw(body[: len(body) // 2])
            if beh.kind == "reset-mid":
                await out.reset()
            await out.close_clean()
        if beh.kind == "malformed":
            body = body[: len(body) // 2]
        out.raw(self._head(200, "application/json", length=len(body), keep_alive=keep))
        out.raw(body)
        await out.flush()
        return keep


# --------------------------------------------------------------------------- CLI


async def _serve(host: str, port: int, api_key: str | None) -> None:
    server = FakeOpenAIUpstream(host=host, port=port, api_key=api_key)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"PORT {server.port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai_upstream",
        description="Fake OpenAI-compatible /v1/chat/completions upstream.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(args.host, args.port, args.api_key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
