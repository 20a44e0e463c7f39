"""An upstream written to misbehave, speaking raw HTTP/1.1 for all three wire formats at once: OpenAI's
`/v1/chat/completions`, Anthropic's `/v1/messages` and Gemini's `/v1beta/models/{model}:…`.

The upstream model name picks the misbehaviour (`SCENARIOS`); each answer closes its connection (a body
delimited by the close, or by its content-length). Floods write until the gateway hangs up and count
what they wrote (`flooded[model]`, `hung_up` is set per flood), so a test can assert the gateway stopped
reading near its limit rather than at the end of an endless body.

    async with HostileUpstream() as upstream:
        upstream.base_url       # http://127.0.0.1:PORT (OpenAI's base_url is this + "/v1")
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.fakes.dead_upstreams import serving

__all__ = ["DEEPER_JSON", "DEEP_JSON", "FLOOD_CHUNK", "SCENARIOS", "HostileUpstream", "WireCall"]

# 30,000 levels of nesting: past any recursion limit, yet under the 64 KiB the gateway reads of an error body;
# an event or a whole answer nests 100,000 levels.
DEEP_JSON = b"[" * 30_000 + b"]" * 30_000
DEEPER_JSON = b"[" * 100_000 + b"]" * 100_000
# What a flood writes at a time; a flood stops at FLOOD_MAX_BYTES if the gateway never hangs up.
FLOOD_CHUNK = 64 * 1024
FLOOD_MAX_BYTES = 1024 * 1024 * 1024
# The numbers an upstream can put in a usage field, as JSON text.
BAD_COUNTS = {"usage-big": b"2147483648", "usage-inf": b"1e400", "usage-neg": b"-1", "usage-text": b'"12"'}
RETRY_HEADERS = {
    "retry-inf": b"retry-after: inf",
    "retry-nan": b"retry-after: nan",
    "retry-huge": b"retry-after: 1e300",
    "retry-ms-huge": b"retry-after-ms: 1e30",
}
SCENARIOS = (
    "ok",
    *BAD_COUNTS,
    *RETRY_HEADERS,
    *("deep-event", "deep-429", "deep-500", "event-flood", "body-flood", "error-flood", "gzip", "gzip-500"),
)


@dataclass(frozen=True, slots=True)
class WireCall:
    """What the gateway asked: which wire format, which model, streaming or not."""

    kind: str  # openai, anthropic, gemini
    model: str
    stream: bool


@dataclass
class HostileUpstream:
    flooded: dict[str, int] = field(default_factory=dict)
    hung_up: dict[str, asyncio.Event] = field(default_factory=dict)
    calls: list[WireCall] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> HostileUpstream:
        self._server = await self._stack.enter_async_context(serving(self._answer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def flood_ended(self, model: str) -> asyncio.Event:
        return self.hung_up.setdefault(model, asyncio.Event())

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = json.loads(await reader.readexactly(length))
            call = _wire_call(head.split(b" ")[1].decode(), body)
            self.calls.append(call)
            await self._misbehave(call, writer)
        writer.close()

    async def _misbehave(self, call: WireCall, writer: asyncio.StreamWriter) -> None:
        scenario = call.model
        if scenario in RETRY_HEADERS:
            writer.write(_head(429, b"application/json", RETRY_HEADERS[scenario]) + b"{}")
        elif scenario in ("deep-429", "deep-500"):
            writer.write(_head(int(scenario[-3:]), b"application/json") + DEEP_JSON)
        elif scenario in ("gzip", "gzip-500"):
            bomb = gzip.compress(b"{" + b" " * 8_000_000 + b"}")
            status = 500 if scenario == "gzip-500" else 200
            kind = b"text/event-stream" if call.stream else b"application/json"
            writer.write(_head(status, kind, b"content-encoding: gzip") + bomb)
        elif scenario == "error-flood":
            await self._flood(call, writer, _head(500, b"application/json") + b'{"error": "', b"x" * FLOOD_CHUNK)
        elif scenario == "body-flood":
            await self._flood(call, writer, _head(200, b"application/json") + b'{"x": "', b"x" * FLOOD_CHUNK)
        elif scenario == "event-flood":
            # One event of endless data lines, each far under the line limit, never a blank line.
            line = b"data: " + b"x" * (FLOOD_CHUNK - 7) + b"\n"
            await self._flood(call, writer, _head(200, b"text/event-stream") + _hi(call.kind), line)
        elif call.stream:
            writer.write(_head(200, b"text/event-stream") + _stream(call.kind, scenario))
        else:
            writer.write(_head(200, b"application/json") + _whole(call.kind, scenario))
        await writer.drain()

    async def _flood(self, call: WireCall, writer: asyncio.StreamWriter, first: bytes, chunk: bytes) -> None:
        sent = 0
        ended = self.flood_ended(call.model)
        try:
            writer.write(first)
            while sent < FLOOD_MAX_BYTES:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        finally:
            self.flooded[call.model] = sent
            ended.set()


def _wire_call(path: str, body: dict[str, object]) -> WireCall:
    if path.startswith("/v1beta/models/"):
        model, _, method = path.removeprefix("/v1beta/models/").partition(":")
        return WireCall("gemini", model, method.startswith("streamGenerateContent"))
    kind = "anthropic" if path == "/v1/messages" else "openai"
    return WireCall(kind, str(body["model"]), bool(body.get("stream")))


def _head(status: int, content_type: bytes, *extra: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d Hostile" % status, b"content-type: " + content_type, b"connection: close", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _count(scenario: str) -> bytes:
    return BAD_COUNTS.get(scenario, b"3")


def _hi(kind: str) -> bytes:
    """The event with the delta "hi" in `kind`'s wire format."""
    if kind == "openai":
        return b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    if kind == "anthropic":
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
        )
    return b'data: {"candidates":[{"content":{"parts":[{"text":"hi"}]}}]}\n\n'


def _stream(kind: str, scenario: str) -> bytes:
    """ "hi", then the end of the reply, whose output token count is the scenario's (a deep event instead)."""
    if scenario == "deep-event":
        return _hi(kind) + b"data: " + DEEPER_JSON + b"\n\n"
    count = _count(scenario)
    if kind == "openai":
        return (
            _hi(kind)
            + b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            + b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":%s}}\n\n' % count
            + b"data: [DONE]\n\n"
        )
    if kind == "anthropic":
        return (
            b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":2}}}\n\n'
            + _hi(kind)
            + b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
            + b'"usage":{"output_tokens":%s}}\n\n' % count
            + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
    return (
        b'data: {"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],'
        b'"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":%s}}\n\n' % count
    )


def _whole(kind: str, scenario: str) -> bytes:
    if scenario == "deep-event":
        return DEEPER_JSON
    count = _count(scenario)
    if kind == "openai":
        return (
            b'{"choices":[{"index":0,"message":{"content":"hi"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":2,"completion_tokens":%s}}' % count
        )
    if kind == "anthropic":
        return (
            b'{"content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn",'
            b'"usage":{"input_tokens":2,"output_tokens":%s}}' % count
        )
    return (
        b'{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],'
        b'"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":%s}}' % count
    )


@contextlib.asynccontextmanager
async def hostile_upstream() -> AsyncIterator[HostileUpstream]:
    async with HostileUpstream() as upstream:
        yield upstream
