"""The HTTP/1.1 machinery and the behaviour grammar that the fake upstreams share.

Each fake (``openai_upstream.py``, ``anthropic_upstream.py``, ``gemini_upstream.py``) is a real HTTP/1.1
server on ``127.0.0.1`` built directly on :func:`asyncio.start_server` (no web framework), so every
byte, every delay and every connection reset is under the test's control. This module holds what they
have in common:

* :class:`FakeHTTPServer`: lifecycle (``async with``), request parsing (``Content-Length`` or chunked
  bodies, ``Expect: 100-continue``, keep-alive), recording (:class:`RecordedRequest`,
  :class:`Disconnect`), the waits tests use, and a gate (``hold``/``release``) that keeps every reply
  before its first piece until the test lets it go; a subclass answers each request in ``respond``;
* :class:`Out`: a buffered response writer that notices disconnects, writes one HTTP chunk per event,
  can write every byte on its own (``split-bytes``), reset (RST) or cut (FIN) the connection;
* :func:`parse_behaviour` and :func:`plan_reply`: the model-name grammar every fake speaks, so that one
  test table runs over every provider:

``<any ordinary name>``
    Echo the text of the LAST user message, one piece per word (whitespace kept, so the pieces
    concatenate to the original). Prompt tokens = whitespace-separated words over every message and
    system prompt; completion tokens = pieces. A max-tokens value below the piece count truncates
    (finish "length").
``tokens-N``
    N pieces ``"t0"``, ``" t1"``, ... (N <= 1,000,000), no delays, pre-encoded (benchmark path).
``slow-first-token-MS`` / ``slow-tokens-MS``
    Echo, waiting MS ms before the first piece / between pieces.
``split-bytes``
    Echo, every byte of the response written on its own.
``no-usage``
    Echo without any usage report.
``cached-N``
    Echo, with N of the prompt tokens (at most all of them) reported as read from the provider's prompt
    cache, in each provider's own field (OpenAI ``prompt_tokens_details.cached_tokens``, Anthropic
    ``cache_read_input_tokens``, Gemini ``cachedContentTokenCount``); the Anthropic fake also reports the
    rest of the prefix up to the request's last ``cache_control`` breakpoint as written to the cache.
``fault-<status>`` (each fake lists the statuses it knows), ``fault-429-no-retry-after``
    That HTTP status with the provider's error body.
``fault-reset-before`` / ``fault-reset-mid`` / ``fault-cut-mid``
    RST before answering / RST after two pieces / a clean end of the body after two pieces.
``fault-inband-{error|ratelimit|invalid}-{before|after}``
    The provider's in-band error event (after two pieces with ``after``).
``fault-malformed`` / ``fault-stall``
    A truncated JSON event / 200 headers then silence until the client leaves.

Tools and structured output, the same in every fake (each in its own wire format; see
:func:`plan_tool_calls`): when the request declares tools, the echo model calls, in parallel, every
declared tool whose name is a word of the last user message (``tool_choice`` required: the first tool when
none is named; a named choice: that tool alone; none: no tool). Each call's arguments are the JSON text
``{"text":"<last user message>"}``, streamed in the echo's pieces; completion tokens count the pieces of
every call. When the last message is a tool result, the echo answers with the result's text. When the
request asks for JSON output (OpenAI ``response_format``, Gemini ``responseMimeType: application/json``),
the echo answers with that same JSON text instead of the plain message.

Reasoning, the same in every fake (each in its own wire format): when the request turns thinking on (OpenAI
``reasoning_effort``, Anthropic ``thinking``, Gemini ``thinkingConfig`` with a budget other than 0), the echo
model first thinks "Thinking about: <last user message>" (:func:`thought_pieces`); those pieces count as
completion tokens. Anthropic streams them as a ``thinking`` block, Gemini as ``"thought": true`` parts when
``includeThoughts`` is set, and OpenAI only counts them (``completion_tokens_details.reasoning_tokens``).

The mid-stream faults use the first two echo pieces, padded with ``"t0"``/``" t1"`` when the last user
message has fewer than two words. Names with the prefixes ``fault-``, ``tokens-``, ``slow-first-token-``,
``slow-tokens-`` or ``cached-`` that do not parse are unknown models (catches typos).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import http
import itertools
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Self

__all__ = [
    "MAX_TOKENS_N",
    "WAIT_TIMEOUT_S",
    "Aborted",
    "Behaviour",
    "Call",
    "ClientGone",
    "Conn",
    "Disconnect",
    "FakeHTTPServer",
    "Out",
    "RecordedRequest",
    "Reply",
    "Request",
    "Wire",
    "json_text",
    "jstr",
    "parse_behaviour",
    "plan_reply",
    "plan_tool_calls",
    "run_cli",
    "text_of",
    "thought_pieces",
]

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024
MAX_TOKENS_N = 1_000_000
FLUSH_AT = 64 * 1024
# How long the waits for what a test caused (a request, a disconnect) may take before they fail. It only keeps
# a broken gateway from hanging the suite, so it is generous for a loaded machine; it stays below the gateway's
# default stream idle timeout (60 s), so a disconnect seen within it was not that timer's doing.
WAIT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- the behaviour grammar

Kind = Literal[
    "echo",
    "tokens",
    "http-error",
    "reset-before",
    "reset-mid",
    "cut-mid",
    "inband",
    "malformed",
    "stall",
    "refusal",
]


@dataclass(frozen=True)
class Behaviour:
    """What a fake does for one model name. ``fault`` names the HTTP fault, ``inband`` the in-band error
    kind ("error", "ratelimit" or "invalid"); each fake turns them into its own bodies."""

    kind: Kind
    tokens: int = 0
    first_delay: float = 0.0
    gap: float = 0.0
    split: bool = False
    usage: bool = True
    fault: str = ""
    inband: str = ""
    inband_after: bool = False
    cached: int = 0  # prompt tokens reported as read from the prompt cache (cached-N)


ECHO = Behaviour("echo")
_RESERVED_PREFIXES = ("fault-", "tokens-", "slow-first-token-", "slow-tokens-", "cached-")
_SIMPLE: dict[str, Behaviour] = {
    "fault-reset-before": Behaviour("reset-before"),
    "fault-reset-mid": Behaviour("reset-mid"),
    "fault-cut-mid": Behaviour("cut-mid"),
    "fault-malformed": Behaviour("malformed"),
    "fault-stall": Behaviour("stall"),
    "split-bytes": Behaviour("echo", split=True),
    "no-usage": Behaviour("echo", usage=False),
}


def parse_behaviour(model: str, http_faults: Collection[str]) -> Behaviour | None:
    """Map a model name to a behaviour; None = a reserved name that does not parse.

    ``http_faults`` are the ``fault-…`` names the calling fake answers with an HTTP error.
    """
    if model in http_faults:
        return Behaviour("http-error", fault=model)
    if model in _SIMPLE:
        return _SIMPLE[model]
    m = re.fullmatch(r"fault-inband-(error|ratelimit|invalid)-(before|after)", model)
    if m:
        return Behaviour("inband", inband=m.group(1), inband_after=m.group(2) == "after")
    m = re.fullmatch(r"tokens-([0-9]{1,7})", model)
    if m:
        n = int(m.group(1))
        return Behaviour("tokens", tokens=n) if n <= MAX_TOKENS_N else None
    m = re.fullmatch(r"slow-first-token-([0-9]{1,7})", model)
    if m:
        return Behaviour("echo", first_delay=int(m.group(1)) / 1000.0)
    m = re.fullmatch(r"slow-tokens-([0-9]{1,7})", model)
    if m:
        return Behaviour("echo", gap=int(m.group(1)) / 1000.0)
    m = re.fullmatch(r"cached-([0-9]{1,7})", model)
    if m:
        return Behaviour("echo", cached=int(m.group(1)))
    if model.startswith(_RESERVED_PREFIXES):
        return None
    return ECHO


@dataclass(frozen=True)
class Reply:
    """The reply a behaviour gives to one request."""

    pieces_json: list[bytes]  # each piece as a JSON string literal
    prompt_tokens: int
    truncated: bool  # cut by the request's max tokens (finish "length")
    echoed: list[str] | None = None  # the pieces as text; None for ``tokens-N`` (made when asked for)
    calls: tuple[Call, ...] = ()  # tool calls, after the text

    @property
    def texts(self) -> list[str]:
        return token_texts(len(self.pieces_json)) if self.echoed is None else self.echoed

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces_json) + sum(len(call.pieces) for call in self.calls)

    def cached_tokens(self, beh: Behaviour) -> int:
        """The prompt tokens a ``cached-N`` behaviour reports as read from the cache."""
        return min(beh.cached, self.prompt_tokens)


@dataclass(frozen=True)
class Call:
    """One tool call of a reply: the tool's name and its arguments' JSON text in pieces."""

    name: str
    pieces: list[str]

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


def json_text(text: str) -> str:
    """The JSON answer (and tool arguments) of the fakes for a message ``text``: ``{"text":"…"}``."""
    return json.dumps({"text": text}, separators=(",", ":"), ensure_ascii=False)


def plan_tool_calls(tools: list[str], choice: str, last_user: str) -> tuple[Call, ...]:
    """The tool calls of the echo model. ``choice`` is "auto", "none", "required" or a tool's name."""
    if not tools or choice == "none":
        return ()
    if choice not in ("auto", "required"):
        names = [choice] if choice in tools else []
    else:
        words = set(last_user.replace(",", " ").split())
        names = [name for name in tools if name in words]
        if not names and choice == "required":
            names = tools[:1]
    return tuple(Call(name, split_pieces(json_text(last_user))) for name in names)


def plan_reply(beh: Behaviour, prompts: Iterable[str], last_user: str, max_tokens: object) -> Reply:
    """The pieces, prompt tokens and finish of a reply; ``prompts`` are the texts of every message."""
    prompt_tokens = sum(len(text.split()) for text in prompts)
    limit = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None
    if limit is not None and limit < 0:
        limit = None
    if beh.kind == "refusal":
        return Reply([], prompt_tokens, False, [])
    if beh.kind == "tokens":
        n = beh.tokens if limit is None else min(beh.tokens, limit)
        return Reply(token_json(n), prompt_tokens, n < beh.tokens)
    texts = split_pieces(last_user)
    if beh.kind in ("reset-mid", "cut-mid", "inband", "malformed"):
        texts = (texts + token_texts(2)[len(texts) :])[:2]
    truncated = limit is not None and limit < len(texts)
    if truncated:
        texts = texts[:limit]
    return Reply([jstr(t) for t in texts], prompt_tokens, truncated, texts)


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


# --------------------------------------------------------------------------- encoding helpers


def jstr(s: str) -> bytes:
    """Compact JSON string literal, UTF-8 (falls back to ASCII escapes for lone surrogates)."""
    try:
        return json.dumps(s, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(s).encode()


_TOKEN_JSON: list[bytes] = []


def token_json(n: int) -> list[bytes]:
    """Pre-encoded JSON literals for "t0", " t1", ... (grown lazily, shared)."""
    while len(_TOKEN_JSON) < n:
        i = len(_TOKEN_JSON)
        _TOKEN_JSON.append(b'"t0"' if i == 0 else b'" t%d"' % i)
    return _TOKEN_JSON[:n]


def token_texts(n: int) -> list[str]:
    return ["t0" if i == 0 else f" t{i}" for i in range(n)]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


_PIECE_RE = re.compile(r"\s*\S+")


def thought_pieces(last_user: str) -> list[str]:
    """The reasoning every fake's echo model does when a request turns thinking on: "Thinking about:
    <the last user message>", in the echo's pieces."""
    return split_pieces(f"Thinking about: {last_user}")


def split_pieces(text: str) -> list[str]:
    pieces: list[str] = _PIECE_RE.findall(text)
    used = sum(len(p) for p in pieces)
    rest = text[used:]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces = [rest]
    return pieces


def frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


_date_cache: list[Any] = [0, b""]


def http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True).encode()
    value: bytes = _date_cache[1]
    return value


# --------------------------------------------------------------------------- connection plumbing


class ClientGone(Exception):
    """The peer closed/reset the connection while we were responding."""


class Aborted(Exception):
    """We deliberately killed the connection (RST or cut)."""


class Framing(Exception):
    """Malformed HTTP request; answer 400/413/431 and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    @property
    def path(self) -> str:
        """The target's path, without the query (an absolute-form target is reduced to its path)."""
        path = self.target.split("?", 1)[0]
        if path.startswith(("http://", "https://")):
            path = "/" + path.split("/", 3)[-1] if path.count("/") >= 3 else "/"
        return path


class Conn:
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
                if len(self.buf) > MAX_BODY + MAX_HEAD:
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
            raise ClientGone
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
                raise Framing(431, "Request header fields too large.")
            start = max(0, len(self.buf) - len(delim) + 1)
            if self.eof:
                if not self.buf:
                    return None
                raise ClientGone
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


class Out:
    """Buffered response writer that knows about disconnects and split-bytes mode."""

    def __init__(self, conn: Conn, split: bool) -> None:
        self.conn = conn
        self.split = split
        self.pending: list[bytes] = []
        self.size = 0

    def raw(self, data: bytes) -> None:
        self.pending.append(data)
        self.size += len(data)

    def event(self, payload: bytes) -> None:
        chunk = frame(payload)
        self.pending.append(chunk)
        self.size += len(chunk)

    async def maybe_flush(self) -> None:
        if self.size >= FLUSH_AT:
            await self.flush()

    async def flush(self) -> None:
        conn = self.conn
        if conn.gone.done():
            raise ClientGone
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
                        raise ClientGone
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ClientGone from exc

    async def sleep(self, seconds: float) -> None:
        """Flush, then wait ``seconds`` - raising ClientGone as soon as the peer leaves."""
        await self.flush()
        if seconds <= 0:
            return
        done, _ = await asyncio.wait({self.conn.gone}, timeout=seconds)
        if done:
            raise ClientGone

    async def until_open(self, gate: asyncio.Event) -> None:
        """Wait until ``gate`` is set (after flushing what is written) - raising ClientGone as soon as the peer
        leaves. An open gate changes nothing, not even how the bytes are split into writes."""
        if gate.is_set():
            return
        await self.flush()

        async def opened_() -> None:
            await gate.wait()

        opened = asyncio.ensure_future(opened_())
        try:
            await asyncio.wait({opened, self.conn.gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
        if not gate.is_set():
            raise ClientGone

    async def until_step(self, steps: asyncio.Semaphore) -> None:
        """Flush, then take one step from ``steps`` - raising ClientGone as soon as the peer leaves."""
        await self.flush()

        async def step() -> None:
            await steps.acquire()

        stepped = asyncio.ensure_future(step())
        try:
            await asyncio.wait({stepped, self.conn.gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stepped.cancel()
        if not stepped.done() or stepped.cancelled():
            raise ClientGone

    async def wait_gone(self) -> None:
        await self.flush()
        await self.conn.gone
        raise ClientGone

    async def end_chunked(self) -> None:
        self.raw(b"0\r\n\r\n")
        await self.flush()

    async def reset(self) -> None:
        """Deliver what was written, then RST the connection."""
        await self.flush()
        transport = self.conn.writer.transport
        deadline = time.monotonic() + WAIT_TIMEOUT_S  # a busy peer may read slowly; a gone one ends it early
        while transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:
            if self.conn.gone.done():
                raise ClientGone
            await asyncio.sleep(0.001)
        # Give the peer a moment to read the bytes before the RST arrives.
        await self.sleep(0.005)
        self.conn.rst()
        raise Aborted

    async def close_clean(self) -> None:
        """Deliver what was written, then close with a FIN."""
        await self.flush()
        writer = self.conn.writer
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        raise Aborted


# --------------------------------------------------------------------------- wire formats


class Wire:
    """One reply in one provider's wire format: the events of a stream, or the body of a whole answer.

    Made per request; it holds what the request decided (the behaviour, the reply, the model). Each
    method returns ready SSE event bytes (``data: …\n\n``), each written as one HTTP chunk.
    """

    json_type = "application/json"
    sse_type = "text/event-stream"

    def __init__(self, beh: Behaviour, reply: Reply, model: str) -> None:
        self.beh = beh
        self.reply = reply
        self.model = model

    def opening(self) -> list[bytes]:
        """Events before the first piece."""
        return []

    def piece(self, piece_json: bytes) -> bytes:
        """The event of one piece (a JSON string literal): the hot path."""
        raise NotImplementedError

    def closing(self) -> list[bytes]:
        """Events after the last piece: the finish, the usage, the end."""
        raise NotImplementedError

    def tool_events(self) -> list[bytes]:
        """The events of the reply's tool calls (``reply.calls``), after its text pieces."""
        return []

    def malformed(self) -> list[bytes]:
        """``fault-malformed``: events after the opening, one of them truncated JSON."""
        raise NotImplementedError

    def in_band_error(self) -> bytes:
        """The in-band error event of kind ``beh.inband``."""
        raise NotImplementedError

    def whole(self) -> bytes:
        """The body of a whole (non-streaming) answer."""
        raise NotImplementedError

    def whole_in_band_error(self) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        """What a non-streaming ``fault-inband-*`` answers: status, body and extra headers."""
        raise NotImplementedError


# --------------------------------------------------------------------------- the server


# How far a signed request's timestamp may be from the upstream's clock, either way.
SIGNATURE_WINDOW_S = 300


class FakeHTTPServer:
    """A real HTTP/1.1 server on asyncio; subclasses answer parsed requests in :meth:`respond`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | tuple[str, ...] | None = None,
        signing_secret: str | None = None,
    ) -> None:
        self._host = host
        self._port = port
        # The keys the upstream accepts (None: any, or none at all); several, like an account's key list.
        self._api_keys = None if api_key is None else frozenset((api_key,) if isinstance(api_key, str) else api_key)
        self._signing_secret = signing_secret.encode() if signing_secret is not None else None
        # Keys the upstream answers as if the call asked for this fault model ("fault-429" …): a key that is
        # rate limited or revoked on its own (answered by the OpenAI fake).
        self.key_faults: dict[str, str] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._open = 0
        self._accepted = 0
        self._changed: asyncio.Event | None = None
        self._gate: asyncio.Event | None = None
        self._steps: asyncio.Semaphore | None = None  # pace(): each streamed piece waits for a step()
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[Disconnect] = []
        # The provider's own id of each answer, in order: OpenAI's x-request-id and Anthropic's request-id
        # headers, Gemini's responseId in the body of an answer to a valid request.
        self.response_ids: list[str] = []

    # ----- lifecycle

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        self._changed = asyncio.Event()
        self._gate = asyncio.Event()
        self._gate.set()
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=MAX_HEAD * 2, backlog=1024
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

    async def __aenter__(self) -> Self:
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
        """What a gateway's provider `base_url` is set to."""
        return f"http://{self._host}:{self._port}"

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def connections_accepted(self) -> int:
        return self._accepted

    def answer_id(self, make: Callable[[], str]) -> str:
        """A new id for the answer being written (made by `make`), recorded in `response_ids`."""
        answer_id = make()
        self.response_ids.append(answer_id)
        return answer_id

    def hold(self) -> None:
        """Hold every reply, from now on, before its first piece (after the headers and any opening events)
        until :meth:`release`: a test decides when an upstream answers, instead of a delay guessing it."""
        self._started_gate().clear()

    def release(self) -> None:
        """Let every held reply, and every later one, go on."""
        self._started_gate().set()

    def pace(self) -> None:
        """From now on, write each streamed piece on its own, and only once :meth:`step` lets it go (the
        pieces before it are on the wire by then): a test decides when each token leaves, so it knows a
        gateway that keeps up had every piece on its own."""
        self._steps = asyncio.Semaphore(0)

    def step(self, pieces: int = 1) -> None:
        """Let `pieces` more streamed pieces go (see :meth:`pace`)."""
        if self._steps is None:
            raise RuntimeError("pace() first")
        for _ in range(pieces):
            self._steps.release()

    def _started_gate(self) -> asyncio.Event:
        if self._gate is None:
            raise RuntimeError("server not started")
        return self._gate

    def clear(self) -> None:
        """Forget recorded requests, disconnects and answer ids."""
        self.requests.clear()
        self.disconnects.clear()
        self.response_ids.clear()

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
        self, timeout: float = WAIT_TIMEOUT_S, *, model: str | None = None, count: int = 1
    ) -> Disconnect:
        """Wait until ``count`` disconnects (optionally for ``model``) were seen; return the last.

        Raises TimeoutError otherwise.
        """

        def matching() -> list[Disconnect]:
            return [d for d in self.disconnects if model is None or d.model == model]

        await self._wait_until(lambda: len(matching()) >= count, timeout)
        return matching()[count - 1]

    async def wait_until_idle(self, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Wait until no connection is open."""
        await self._wait_until(lambda: self._open == 0, timeout)

    async def wait_for_connections(self, count: int, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Wait until ``count`` connections were accepted in all."""
        await self._wait_until(lambda: self._accepted >= count, timeout)

    async def wait_for_open_connections_at_most(self, count: int, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Wait until no more than ``count`` connections are open."""
        await self._wait_until(lambda: self._open <= count, timeout)

    async def wait_for_requests(self, count: int = 1, timeout: float = WAIT_TIMEOUT_S) -> RecordedRequest:
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
        self._notify()
        conn = Conn(cid, reader, writer)
        close_cleanly = True
        try:
            while True:
                try:
                    req = await self._read_request(conn)
                except Framing as exc:
                    with contextlib.suppress(ClientGone):
                        await self.send_framing_error(Out(conn, False), exc.status, exc.message)
                    break
                except ClientGone:
                    break
                if req is None:
                    break
                try:
                    keep = await self.respond(conn, req)
                except ClientGone:
                    self._record_disconnect(conn, req)
                    close_cleanly = False
                    break
                except Aborted:
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

    def _record_disconnect(self, conn: Conn, req: Request) -> None:
        model: str | None = None
        with contextlib.suppress(Exception):
            model = self.model_of(req)
        when = conn.eof_time if conn.eof_time is not None else time.monotonic()
        self.disconnects.append(Disconnect(model=model, time=when, connection_id=conn.cid))
        self._notify()

    async def _read_request(self, conn: Conn) -> Request | None:
        # Tolerate stray CRLFs between requests (RFC 9112 section 2.2).
        while conn.buf[:2] == b"\r\n":
            del conn.buf[:2]
        head = await conn.read_until(b"\r\n\r\n", MAX_HEAD)
        if head is None:
            return None
        if head.startswith(b"\r\n"):
            head = head.lstrip(b"\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise Framing(400, "Malformed request line.")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise Framing(400, "Malformed header line.")
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
                raise Framing(400, "Invalid content-length.")
            length = int(raw_len)
            if length > MAX_BODY:
                raise Framing(413, "Request entity too large.")
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
        req = Request(method, target, version, headers, body, keep_alive)
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

    async def _read_chunked(self, conn: Conn) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await conn.read_until(b"\r\n", MAX_HEAD)
            if line is None:
                raise ClientGone
            size_txt = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError as exc:
                raise Framing(400, "Invalid chunk size.") from exc
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await conn.read_until(b"\r\n", MAX_HEAD)
                    if trailer is None:
                        raise ClientGone
                    if trailer == b"\r\n":
                        return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise Framing(413, "Request entity too large.")
            data = await conn.read_exactly(size + 2)
            if data[-2:] != b"\r\n":
                raise Framing(400, "Invalid chunk framing.")
            parts.append(data[:-2])

    # ----- responses

    def head(
        self,
        status: int,
        content_type: str,
        *,
        length: int | None,
        keep_alive: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        phrase = "Site is overloaded" if status == 529 else http.HTTPStatus(status).phrase  # 529: Anthropic's
        lines = [
            b"HTTP/1.1 %d %b" % (status, phrase.encode()),
            b"date: " + http_date(),
            b"content-type: " + content_type.encode(),
            b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length,
            b"connection: keep-alive" if keep_alive else b"connection: close",
            *self.vendor_headers(content_type),
        ]
        for name, value in extra:
            lines.append(f"{name}: {value}".encode("latin-1"))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    # ----- replies

    async def stream_reply(self, out: Out, wire: Wire, keep: bool) -> bool:
        """Write a streaming answer as the behaviour says; return whether the connection stays usable."""
        beh = wire.beh
        out.raw(self.head(200, wire.sse_type, length=None, keep_alive=keep))
        if beh.kind == "stall":
            await out.wait_gone()
        if beh.kind == "inband" and not beh.inband_after:
            out.event(wire.in_band_error())
            await out.end_chunked()
            return keep
        for event in wire.opening():
            out.event(event)
        if beh.kind == "malformed":
            for event in wire.malformed():
                out.event(event)
            await out.end_chunked()
            return keep
        await out.until_open(self._started_gate())
        if beh.first_delay:
            await out.sleep(beh.first_delay)
        piece = wire.piece
        for i, piece_json in enumerate(wire.reply.pieces_json):
            if i and beh.gap:
                await out.sleep(beh.gap)
            if self._steps is not None:
                await out.until_step(self._steps)
            out.event(piece(piece_json))
            await out.maybe_flush()

        if beh.kind == "reset-mid":
            await out.reset()
        if beh.kind == "cut-mid":
            await out.end_chunked()
            return keep
        if beh.kind == "inband":
            out.event(wire.in_band_error())
            await out.end_chunked()
            return keep
        for event in wire.tool_events():
            out.event(event)
        for event in wire.closing():
            out.event(event)
        await out.end_chunked()
        return keep

    async def complete_reply(self, out: Out, wire: Wire, keep: bool) -> bool:
        """Write a whole (non-streaming) answer as the behaviour says."""
        beh = wire.beh
        if beh.kind == "stall":
            out.raw(self.head(200, wire.json_type, length=None, keep_alive=keep))
            await out.wait_gone()
        await out.until_open(self._started_gate())
        delay = beh.first_delay + beh.gap * max(0, wire.reply.completion_tokens - 1)
        if delay:
            await out.sleep(delay)
        if beh.kind == "inband":
            status, body, extra = wire.whole_in_band_error()
            out.raw(self.head(status, wire.json_type, length=len(body), keep_alive=keep, extra=extra))
            out.raw(body)
            await out.flush()
            return keep
        body = wire.whole()
        if beh.kind in ("reset-mid", "cut-mid"):
            out.raw(self.head(200, wire.json_type, length=len(body), keep_alive=False))
            out.raw(body[: len(body) // 2])
            if beh.kind == "reset-mid":
                await out.reset()
            await out.close_clean()
        if beh.kind == "malformed":
            body = body[: len(body) // 2]
        out.raw(self.head(200, wire.json_type, length=len(body), keep_alive=keep))
        out.raw(body)
        await out.flush()
        return keep

    async def send_body(
        self,
        out: Out,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        keep_alive: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        """Write a whole response; return ``keep_alive``."""
        out.raw(self.head(status, content_type, length=len(body), keep_alive=keep_alive, extra=extra))
        out.raw(body)
        await out.flush()
        return keep_alive

    # ----- credentials

    def key_accepted(self, key: str) -> bool:
        return self._api_keys is None or key in self._api_keys

    def signature_problem(self, req: Request) -> str | None:
        """Why the request's X-Timestamp/X-Signature do not hold, when the upstream requires signed requests:
        hex HMAC-SHA256 of `METHOD:path:timestamp:body`, the timestamp within SIGNATURE_WINDOW_S of now."""
        if self._signing_secret is None:
            return None
        timestamp, given = req.headers.get("x-timestamp", ""), req.headers.get("x-signature", "")
        if not timestamp.isdigit() or not given:
            return "missing X-Timestamp or X-Signature"
        if abs(time.time() - int(timestamp)) > SIGNATURE_WINDOW_S:
            return "stale X-Timestamp"
        message = f"{req.method}:{req.path}:{timestamp}:".encode() + req.body
        expected = hmac.new(self._signing_secret, message, hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, given) else "bad X-Signature"

    # ----- what a subclass provides

    async def respond(self, conn: Conn, req: Request) -> bool:
        """Answer one request; return whether the connection may serve another."""
        raise NotImplementedError

    async def send_framing_error(self, out: Out, status: int, message: str) -> None:
        """Answer a request that is not valid HTTP/1.1 (400, 413, 431); the connection is closed after."""
        raise NotImplementedError

    def vendor_headers(self, content_type: str) -> list[bytes]:
        """The provider's own response header lines, after `connection:`."""
        return []

    def model_of(self, req: Request) -> str | None:
        """The model a request asked for (for :class:`Disconnect`); by default the body's ``model``."""
        body = json.loads(req.body)
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None


# --------------------------------------------------------------------------- CLI


def run_cli(
    argv: list[str] | None,
    server_type: type[FakeHTTPServer],
    *,
    prog: str,
    description: str,
    api_key_env: str,
    key_help: str,
) -> int:
    """``--host``, ``--port`` (0: any free one), ``--api-key``; prints ``PORT <n>`` once listening and
    serves until SIGTERM/SIGINT, then returns 0."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=os.environ.get(api_key_env) or None, help=key_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(server_type(host=args.host, port=args.port, api_key=args.api_key)))
    return 0


async def _serve(server: FakeHTTPServer) -> None:
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
