"""A fake Anthropic Messages API upstream (``POST /v1/messages``) for tests and benchmarks.

A real HTTP/1.1 server on ``127.0.0.1`` (see ``http_server.py``, which also describes the model-name
behaviour grammar shared by every fake). It speaks the wire format of Anthropic's public API reference:

* Requests need ``anthropic-version`` (else 400) and, when the fake was given ``api_key``, ``x-api-key``
  (401 ``authentication_error`` "x-api-key header is required" / "invalid x-api-key" otherwise). The body
  must have ``model``, ``max_tokens`` and ``messages`` ("<field>: Field required"); a field the API does
  not know is refused ("<field>: Extra inputs are not permitted"), and so is a message of role
  ``system`` (the API takes a top-level ``system``). Consecutive messages of one role are accepted, as
  the API does (it merges them).
* ``"stream": true`` -> 200 ``text/event-stream; charset=utf-8``, each event ``event: <type>\\ndata:
  <json>\\n\\n`` and one HTTP chunk: ``message_start`` (``usage.input_tokens`` and ``output_tokens: 1``),
  ``content_block_start`` (an empty text block), ``ping``, one ``content_block_delta`` with a
  ``text_delta`` per piece, ``content_block_stop``, ``message_delta`` (``stop_reason`` ``end_turn`` or
  ``max_tokens`` and the cumulative ``usage.output_tokens``), ``message_stop``.
* otherwise -> 200 ``application/json``: a ``message`` with one ``text`` content block and ``usage``.
* ``POST /v1/messages/count_tokens``: the Messages body without ``max_tokens`` (or sampling, metadata,
  stream: "Extra inputs are not permitted"), answered ``{"input_tokens": N}``, N what the same request's
  ``usage.input_tokens`` would be (the words of ``system`` and the messages).
* Errors: ``{"type":"error","error":{"type":…,"message":…},"request_id":"req_…"}`` with the statuses of
  the reference: ``fault-400`` invalid_request_error, ``fault-401`` authentication_error, ``fault-403``
  permission_error, ``fault-404`` not_found_error, ``fault-413`` request_too_large, ``fault-429``
  rate_limit_error (``retry-after: 7`` and ``anthropic-ratelimit-*`` headers; ``fault-429-no-retry-after``
  without ``retry-after``), ``fault-500`` api_error, ``fault-503`` api_error, ``fault-529``
  overloaded_error; ``fault-502`` is Cloudflare's HTML page.
* In-band errors are ``event: error`` with ``{"type":"error","error":{"type":"overloaded_error"|
  "rate_limit_error"|"invalid_request_error",…}}``; a non-streaming ``fault-inband-*`` answers with the
  matching HTTP error instead (529, 429 without ``retry-after``, 400), as the API does.
* ``fault-malformed`` sends ``message_start`` and friends, a truncated ``content_block_delta``, then
  ``message_stop``; ``fault-cut-mid`` ends the body after two deltas (no ``message_stop``).
* ``refusal`` (this fake and the Gemini one): no content, ``stop_reason: "refusal"``.
* Tools (``http_server.py`` says which the echo calls): ``tools`` need ``name`` and ``input_schema``
  ("tools.<i>.input_schema: Field required"); ``tool_choice`` ``{"type":"auto"|"any"|"none"}`` or
  ``{"type":"tool","name":…}``. A call streams as ``content_block_start`` with a ``tool_use`` block
  (``id`` ``toolu_…``, ``name``, ``"input":{}``), a ``content_block_delta`` with an empty
  ``input_json_delta`` then one per piece of its arguments (``partial_json``), ``content_block_stop``;
  several calls follow one another (block indexes 0, 1, …), the ``ping`` after the first block start; the
  stop reason is ``tool_use``. A whole answer holds ``tool_use`` blocks with the parsed ``input``. A
  last user message made of ``tool_result`` blocks is answered with their text; ``tool_result`` contents
  count as prompt words.
* Prompt caching: a content block (of ``system`` or a message) may carry ``cache_control``
  ``{"type":"ephemeral"}`` (``ttl`` ``"5m"`` or ``"1h"``), at most 4 in a request ("A maximum of 4 blocks
  with cache_control may be provided. Found 5."), the ``1h`` ones before the ``5m`` ones (else 400);
  ``cached-N`` reports ``cache_read_input_tokens`` N and ``cache_creation_input_tokens`` the rest of the
  prompt up to the last breakpoint, split by TTL in ``cache_creation`` (``ephemeral_1h_input_tokens`` up to
  the last ``1h`` breakpoint, ``ephemeral_5m_input_tokens`` the rest); ``input_tokens`` is the prompt after
  both (the three add up to the prompt's words).
* Images: ``image`` blocks with a ``base64`` source (``media_type`` image/jpeg, png, gif or webp and valid
  base64 ``data``, else 400) or a ``url`` source; they add nothing to the prompt's words.
* Extended thinking: ``thinking`` ``{"type":"enabled","budget_tokens":N}`` (N >= 1024 and below
  ``max_tokens``, else 400) makes the echo think first (``http_server.py``): a stream opens with a
  ``thinking`` block at index 0 (``content_block_start`` with empty ``thinking`` and ``signature``, the
  ``ping``, a ``thinking_delta`` per piece, one ``signature_delta``, ``content_block_stop``), the text or
  tool-use blocks follow from index 1; a whole answer starts with ``{"type":"thinking","thinking":…,
  "signature":…}``. ``output_tokens`` count the thinking too. The signature is the fake's MAC of the
  thinking text (:func:`thinking_signature`). A last user message that holds Anthropic's documented magic
  string (``REDACTED_TRIGGER``) adds a ``redacted_thinking`` block (``data``: the fake's MAC'd bytes, in its
  ``content_block_start``) after the thinking block. Sent back, every ``thinking`` block must carry the
  signature of its text ("messages.1.content.0: Invalid `signature` in `thinking` block") and every
  ``redacted_thinking`` block data the fake made; with thinking on, a conversation that ends with
  ``tool_result`` blocks needs the assistant message before them to start with a thinking or
  redacted_thinking block, as the API demands.
* ``no-usage`` leaves ``usage`` out of ``message_start`` and ``message_delta`` (the real API always sends
  it; the gateway must still say "unreported" rather than invent zeros).

CLI: ``python -m tests.fakes.anthropic_upstream --port 0 [--api-key KEY]`` prints ``PORT <n>``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
from typing import Any

from tests.fakes.embeddings import word_count
from tests.fakes.http_server import (
    Aborted,
    Behaviour,
    Conn,
    FakeHTTPServer,
    Out,
    Reply,
    Request,
    Wire,
    jstr,
    parse_behaviour,
    plan_reply,
    plan_tool_calls,
    run_cli,
    text_of,
    thought_pieces,
)

__all__ = ["API_VERSION", "MESSAGES_PATH", "FakeAnthropicUpstream"]

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# The fields count_tokens takes: the Messages body less max_tokens, sampling, metadata and stream.
_COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"})
MAX_CACHE_BREAKPOINTS = 4
MIN_THINKING_BUDGET = 1024
# Anthropic's documented test string that makes a model answer with a redacted_thinking block.
REDACTED_TRIGGER = (
    "ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_46C9A13E193C177646C7398A98432ECCCE4C1253D5E2D82641AC0E52CC2876CB"
)
_MAC_KEY = b"fake-anthropic-thinking"


def thinking_signature(thinking: str) -> str:
    """The signature of a thinking block (opaque to clients; checked when the block comes back)."""
    mac = hmac.new(_MAC_KEY, thinking.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.b64encode(b"\x12\x0c" + mac).decode()


def redacted_data(seed: str) -> str:
    """A redacted_thinking block's data: bytes and their MAC, so that the fake knows its own."""
    body = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
    return base64.b64encode(body + hmac.new(_MAC_KEY, body, hashlib.sha256).digest()[:16]).decode()


def _redacted_ok(data: object) -> bool:
    try:
        raw = base64.b64decode(str(data), validate=True)
    except ValueError:
        return False
    return len(raw) == 48 and hmac.compare_digest(raw[32:], hmac.new(_MAC_KEY, raw[:32], hashlib.sha256).digest()[:16])


API_VERSION = "2023-06-01"
API_KEY_ENV = "FAKE_ANTHROPIC_REQUIRED_API_KEY"

_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
    }
)
_RATE_LIMIT_MESSAGE = (
    "This request would exceed the rate limit for your organization (00000000-0000-0000-0000-000000000000) "
    "of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can "
    "see the response headers for current usage. Please reduce the prompt length or the maximum tokens "
    "requested, or try again later."
)
_RATE_LIMIT_HEADERS = (
    ("anthropic-ratelimit-requests-limit", "50"),
    ("anthropic-ratelimit-requests-remaining", "0"),
    ("anthropic-ratelimit-requests-reset", "2025-01-01T00:00:07Z"),
)
# model -> (status, error type, message, extra headers)
_HTTP_FAULTS: dict[str, tuple[int, str, str, tuple[tuple[str, str], ...]]] = {
    "fault-400": (400, "invalid_request_error", "messages: text content blocks must be non-empty", ()),
    "fault-401": (401, "authentication_error", "invalid x-api-key", ()),
    "fault-403": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
        (),
    ),
    "fault-404": (404, "not_found_error", "model: fault-404", ()),
    "fault-413": (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", ()),
    "fault-429": (429, "rate_limit_error", _RATE_LIMIT_MESSAGE, (("retry-after", "7"), *_RATE_LIMIT_HEADERS)),
    "fault-429-no-retry-after": (429, "rate_limit_error", _RATE_LIMIT_MESSAGE, _RATE_LIMIT_HEADERS),
    "fault-500": (500, "api_error", "Internal server error", ()),
    "fault-503": (503, "api_error", "Service unavailable", ()),
    "fault-529": (529, "overloaded_error", "Overloaded", ()),
}
# The API sits behind Cloudflare, whose own 502 is an HTML page.
_BAD_GATEWAY = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
# in-band kind -> (HTTP status of the non-streaming answer, error type, message)
_INBAND_ERRORS = {
    "error": (529, "overloaded_error", "Overloaded"),
    "ratelimit": (429, "rate_limit_error", _RATE_LIMIT_MESSAGE),
    "invalid": (400, "invalid_request_error", "messages: this is a fake invalid request"),
}
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


@functools.lru_cache(maxsize=1024)
def _behaviour(model: str) -> Behaviour | None:
    if model == "refusal":
        return Behaviour("refusal")
    return parse_behaviour(model, {*_HTTP_FAULTS, "fault-502"})


def _error_body(type_: str, message: str, request_id: str | None = None) -> bytes:
    error = {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id or _id("req_")}
    return json.dumps(error, separators=(",", ":")).encode()


def _id(prefix: str) -> str:
    return prefix + "011C" + secrets.token_hex(11)


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (name, data)


class FakeAnthropicUpstream(FakeHTTPServer):
    """Fake Anthropic Messages API upstream.  See the module docstring."""

    _error_id: str | None = None  # the request_id of the error body being sent, for its header

    def vendor_headers(self, content_type: str) -> list[bytes]:
        error_id, self._error_id = self._error_id, None
        lines = [
            b"request-id: " + self.answer_id(lambda: error_id or _id("req_")).encode(),
            b"anthropic-organization-id: 00000000-0000-0000-0000-000000000000",
            b"server: cloudflare",
            b"x-robots-tag: none",
        ]
        if content_type.startswith("text/event-stream"):
            lines.append(b"cache-control: no-cache")
        return lines

    async def send_framing_error(self, out: Out, status: int, message: str) -> None:
        await self._send_error(out, status, "invalid_request_error", message, keep_alive=False)

    async def _send_error(
        self,
        out: Out,
        status: int,
        type_: str,
        message: str,
        *,
        keep_alive: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        # The body's request_id is the request-id header's, as Anthropic sends them; send_body writes
        # the head (and so takes the id) before it awaits anything.
        self._error_id = _id("req_")
        body = _error_body(type_, message, self._error_id)
        return await self.send_body(out, status, body, keep_alive=keep_alive, extra=extra)

    async def _count_tokens(self, out: Out, conn: Conn, raw: bytes, keep: bool) -> bool:
        """``POST /v1/messages/count_tokens``: the Messages body without ``max_tokens`` (or sampling,
        metadata, stream), answered ``{"input_tokens": N}``, N the words of ``system`` and the messages (what
        the same request's ``usage.input_tokens`` would say)."""
        problem, body = _check_count_body(raw)
        if problem:
            return await self._send_error(out, 400, "invalid_request_error", problem, keep_alive=keep)
        model = body["model"]
        beh = _behaviour(model)
        if beh is None:
            return await self._send_error(out, 404, "not_found_error", f"model: {model}", keep_alive=keep)
        if beh.fault == "fault-502":
            return await self.send_body(out, 502, _BAD_GATEWAY, content_type="text/html", keep_alive=keep)
        if beh.kind == "http-error":
            status, type_, message, extra = _HTTP_FAULTS[beh.fault]
            return await self._send_error(out, status, type_, message, keep_alive=keep, extra=extra)
        if beh.kind == "reset-before":
            conn.rst()
            raise Aborted
        await out.until_open(self._started_gate())
        texts = [_text(body.get("system")), *(_text(m.get("content")) for m in body["messages"])]
        answer = json.dumps({"input_tokens": word_count(texts)}, separators=(",", ":")).encode()
        return await self.send_body(out, 200, answer, keep_alive=keep)

    async def respond(self, conn: Conn, req: Request) -> bool:
        keep = req.keep_alive
        out = Out(conn, False)
        if req.path not in (MESSAGES_PATH, COUNT_TOKENS_PATH) or req.method != "POST":
            return await self._send_error(out, 404, "not_found_error", "Not Found", keep_alive=keep)
        if self._api_keys is not None:
            key = req.headers.get("x-api-key", "")
            if not self.key_accepted(key):
                message = "invalid x-api-key" if key else "x-api-key header is required"
                return await self._send_error(out, 401, "authentication_error", message, keep_alive=keep)
        if (problem := self.signature_problem(req)) is not None:
            message = f"invalid request signature: {problem}"
            return await self._send_error(out, 401, "authentication_error", message, keep_alive=keep)
        if "anthropic-version" not in req.headers:
            message = "anthropic-version: header is required"
            return await self._send_error(out, 400, "invalid_request_error", message, keep_alive=keep)
        if req.path == COUNT_TOKENS_PATH:
            return await self._count_tokens(out, conn, req.body, keep)
        problem, body = _check_body(req.body)
        if problem:
            return await self._send_error(out, 400, "invalid_request_error", problem, keep_alive=keep)
        model = body["model"]
        beh = _behaviour(model)
        if beh is None:
            return await self._send_error(out, 404, "not_found_error", f"model: {model}", keep_alive=keep)
        if beh.fault == "fault-502":
            return await self.send_body(out, 502, _BAD_GATEWAY, content_type="text/html", keep_alive=keep)
        if beh.kind == "http-error":
            status, type_, message, extra = _HTTP_FAULTS[beh.fault]
            return await self._send_error(out, status, type_, message, keep_alive=keep, extra=extra)
        if beh.kind == "reset-before":
            conn.rst()
            raise Aborted

        prompts = [_text(body.get("system"))]
        last_user = ""
        for message in body["messages"]:
            text = _text(message.get("content"))
            prompts.append(text)
            if message.get("role") == "user":
                last_user = text
        prefix = _cached_prefix(body), _cached_prefix(body, hour=True)
        thinks = (body.get("thinking") or {}).get("type") == "enabled" and beh.kind == "echo"
        thoughts = thought_pieces(last_user) if thinks else []
        redacted = redacted_data(last_user) if thinks and REDACTED_TRIGGER in last_user else ""
        calls = plan_tool_calls(_tool_names(body), _tool_choice(body), last_user) if beh.kind == "echo" else ()
        reply = plan_reply(beh, prompts, last_user, body["max_tokens"])
        if calls:
            reply = Reply([], reply.prompt_tokens, False, [], calls)
        if beh.split:
            out = Out(conn, True)
        wire = _AnthropicWire(beh, reply, model, prefix, thoughts, redacted)
        if body.get("stream") is True:
            return await self.stream_reply(out, wire, keep)
        return await self.complete_reply(out, wire, keep)


def _text(content: Any) -> str:
    """The text of a message's content: its text blocks, and the content of its tool_result blocks."""
    if not isinstance(content, list):
        return text_of(content)
    texts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            texts.append(text_of(block.get("content")))
        elif isinstance(block, dict) and isinstance(block.get("text"), str):
            texts.append(block["text"])
    return "\n".join(texts)


def _blocks_of(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(its text, the block) of every content block in prompt order: system, then each message's."""
    out: list[tuple[str, Any]] = []
    for content in [body.get("system"), *(m.get("content") for m in body["messages"])]:
        if isinstance(content, list):
            out += [(_text([block]), block) for block in content]
        elif content is not None:
            out.append((text_of(content), None))
    return out


def _cached_prefix(body: dict[str, Any], *, hour: bool = False) -> int:
    """Prompt words up to and including the last block with cache_control (0 without one); with `hour`,
    the last block whose cache_control has a 1-hour TTL."""
    words = 0
    prefix = 0
    for text, block in _blocks_of(body):
        words += len(text.split())
        control = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(control, dict) and (not hour or control.get("ttl") == "1h"):
            prefix = words
    return prefix


def _cache_problem(body: dict[str, Any]) -> str:
    """The API's complaint about the request's cache_control markers, or ""."""
    found = 0
    short = False  # a 5-minute breakpoint came before
    for _, block in _blocks_of(body):
        if not isinstance(block, dict) or "cache_control" not in block:
            continue
        found += 1
        control = block["cache_control"]
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            return "cache_control.type: Input should be 'ephemeral'"
        if set(control) - {"type", "ttl"} or control.get("ttl", "5m") not in ("5m", "1h"):
            return "cache_control.ttl: Input should be '5m' or '1h'"
        if control.get("ttl") == "1h" and short:
            return (
                "A cache_control with ttl='1h' cannot come after a cache_control with ttl='5m': cache "
                "entries with a longer TTL must appear before shorter ones."
            )
        short = short or control.get("ttl", "5m") == "5m"
    if found > MAX_CACHE_BREAKPOINTS:
        return f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {found}."
    return ""


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [str(tool["name"]) for tool in body.get("tools") or ()]


def _tool_choice(body: dict[str, Any]) -> str:
    choice = body.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type")
    return {"any": "required", "tool": str(choice.get("name"))}.get(str(kind), str(kind))


def _check_count_body(raw: bytes) -> tuple[str, Any]:
    """("", body) for a body count_tokens accepts (the Messages body's checks, with its own fields)."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return "There was an error parsing the body of your request. Please check that it is valid JSON.", None
    if not isinstance(body, dict):
        return "Input should be a valid dictionary", None
    for name in body:
        if name not in _COUNT_FIELDS:
            return f"{name}: Extra inputs are not permitted", None
    problem, _ = _check_body(json.dumps({**body, "max_tokens": 1}).encode())
    return problem, None if problem else body


def _check_body(raw: bytes) -> tuple[str, Any]:
    """("", body) for a body the Messages API accepts, else (the API's complaint, None)."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return "There was an error parsing the body of your request. Please check that it is valid JSON.", None
    if not isinstance(body, dict):
        return "Input should be a valid dictionary", None
    for name in body:
        if name not in _FIELDS:
            return f"{name}: Extra inputs are not permitted", None
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required", None
    if not isinstance(body["model"], str) or not isinstance(body["messages"], list):
        return "model and messages: wrong type", None
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return "max_tokens: Input should be greater than or equal to 1", None
    for i, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            return (
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                'parameter, not "system" as an input message role.'
            ), None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'", None
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        for name in ("name", "input_schema"):
            if not isinstance(tool, dict) or name not in tool:
                return f"tools.{i}.{name}: Field required", None
    if problem := _image_problem(body):
        return problem, None
    if problem := _cache_problem(body):
        return problem, None
    if problem := _thinking_problem(body):
        return problem, None
    if problem := _signed_problem(body):
        return problem, None
    return "", body


_FINAL_THINKING = (
    "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. When "
    "`thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the "
    "lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from "
    "previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)


def _signed_problem(body: dict[str, Any]) -> str:
    """The API's complaint about thinking blocks sent back (altered, or missing in a tool-use loop), or ""."""
    messages = body["messages"]
    for i, message in enumerate(messages):
        content = message.get("content")
        for j, block in enumerate(content if isinstance(content, list) else ()):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "thinking" and block.get("signature") != thinking_signature(str(block.get("thinking"))):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
            if kind == "redacted_thinking" and not _redacted_ok(block.get("data")):
                return f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block"
    if (body.get("thinking") or {}).get("type") != "enabled" or len(messages) < 2:
        return ""
    last, before = messages[-1], messages[-2]
    ends_in_results = isinstance(last.get("content"), list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"]
    )
    if not ends_in_results or before.get("role") != "assistant":
        return ""
    content = before.get("content")
    first = content[0] if isinstance(content, list) and content else {"type": "text"}
    found = first.get("type") if isinstance(first, dict) else "text"
    if found not in ("thinking", "redacted_thinking"):
        return _FINAL_THINKING.format(i=len(messages) - 2, found=found)
    return ""


IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _image_problem(body: dict[str, Any]) -> str:
    """The API's complaint about an image block, or ""."""
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, dict) or block.get("type") != "image":
                continue
            source = block.get("source") or {}
            where = f"messages.{i}.content.{j}.image.source"
            if source.get("type") == "base64":
                if source.get("media_type") not in IMAGE_MEDIA_TYPES:
                    allowed = "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                    return f"{where}.base64.media_type: Input should be {allowed}"
                try:
                    base64.b64decode(str(source.get("data")), validate=True)
                except ValueError:
                    return f"{where}.base64.data: The image data is not valid base64."
            elif source.get("type") != "url" or not isinstance(source.get("url"), str):
                return f"{where}: Input tag does not match any of the expected tags: 'base64', 'url', 'file'"
    return ""


def _thinking_problem(body: dict[str, Any]) -> str:
    """The API's complaint about `thinking`, or ""."""
    thinking = body.get("thinking")
    if thinking is None:
        return ""
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        return "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'"
    if thinking["type"] == "disabled":
        return ""
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
        return f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
    if body["max_tokens"] <= budget:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    return ""


class _AnthropicWire(Wire):
    """Messages API stream events and message objects."""

    sse_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        beh: Behaviour,
        reply: Reply,
        model: str,
        cached_prefix: tuple[int, int] = (0, 0),
        thoughts: list[str] | None = None,
        redacted: str = "",
    ) -> None:
        super().__init__(beh, reply, model)
        self.thoughts = thoughts or []
        self.redacted = redacted  # a redacted_thinking block's data, after the thinking block
        # The index of the block after the thinking (and redacted_thinking) block.
        self.first = (1 if self.thoughts else 0) + (1 if redacted else 0)
        self.output_tokens = reply.completion_tokens + len(self.thoughts)
        # cached-N: N prompt tokens read from the cache; the rest of the prefix up to the last breakpoint
        # written to it; input_tokens are what remains (the three add up to the prompt).
        self.cache_read = reply.cached_tokens(beh)
        prefix, hour_prefix = cached_prefix
        self.cache_write = max(min(prefix, reply.prompt_tokens) - self.cache_read, 0) if beh.cached else 0
        hour = max(min(hour_prefix, reply.prompt_tokens) - self.cache_read, 0) if beh.cached else 0
        self.cache_write_1h = min(hour, self.cache_write)
        if beh.kind == "refusal":
            self.stop_reason = "refusal"
        elif reply.calls:
            self.stop_reason = "tool_use"
        else:
            self.stop_reason = "max_tokens" if reply.truncated else "end_turn"
        self.call_ids = [_id("toolu_") for _ in reply.calls]

    def opening(self) -> list[bytes]:
        message: dict[str, Any] = {
            "id": _id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if self.beh.usage:
            message["usage"] = self._usage(1)
        start = {"type": "message_start", "message": message}
        events = [_event(b"message_start", json.dumps(start, separators=(",", ":")).encode())]
        if self.thoughts:
            events += self._thinking_events()
        if self.redacted:
            redacted = {"type": "redacted_thinking", "data": self.redacted}
            opened: dict[str, Any] = {"type": "content_block_start", "index": 1, "content_block": redacted}
            events.append(_event(b"content_block_start", json.dumps(opened, separators=(",", ":")).encode()))
            events.append(_event(b"content_block_stop", b'{"type":"content_block_stop","index":1}'))
        if self.beh.kind != "refusal" and not self.reply.calls:
            block = b'{"type":"content_block_start","index":%d,"content_block":{"type":"text","text":""}}' % self.first
            events.append(_event(b"content_block_start", block))
            if not self.thoughts:
                events.append(_PING)
        return events

    def _thinking_events(self) -> list[bytes]:
        """A thinking block: its start, the ping, a thinking_delta per piece, the signature, its stop."""
        start = (
            b'{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}'
        )
        events = [_event(b"content_block_start", start), _PING]
        for piece in self.thoughts:
            delta = b'{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":%b}}'
            events.append(_event(b"content_block_delta", delta % jstr(piece)))
        signature = b'{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":%b}}'
        events.append(_event(b"content_block_delta", signature % jstr(thinking_signature("".join(self.thoughts)))))
        events.append(_event(b"content_block_stop", b'{"type":"content_block_stop","index":0}'))
        return events

    def piece(self, piece_json: bytes) -> bytes:
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"text_delta","text":%b}}\n\n' % (self.first, piece_json)
        )

    def tool_events(self) -> list[bytes]:
        events = []
        for i, (call, call_id) in enumerate(zip(self.reply.calls, self.call_ids, strict=True), self.first):
            block = {"type": "tool_use", "id": call_id, "name": call.name, "input": {}}
            start = {"type": "content_block_start", "index": i, "content_block": block}
            events.append(_event(b"content_block_start", json.dumps(start, separators=(",", ":")).encode()))
            if i == 0:  # after a thinking block, the ping came with it
                events.append(_PING)
            for piece in ["", *call.pieces]:
                events.append(
                    _event(
                        b"content_block_delta",
                        b'{"type":"content_block_delta","index":%d,"delta":{"type":"input_json_delta","partial_json":%b}}'
                        % (i, jstr(piece)),
                    )
                )
            events.append(_event(b"content_block_stop", b'{"type":"content_block_stop","index":%d}' % i))
        return events

    def closing(self) -> list[bytes]:
        events = []
        if self.beh.kind != "refusal" and not self.reply.calls:
            events.append(_event(b"content_block_stop", b'{"type":"content_block_stop","index":%d}' % self.first))
        delta = b'{"type":"message_delta","delta":{"stop_reason":"%b","stop_sequence":null}' % self.stop_reason.encode()
        if self.beh.usage:
            delta += b',"usage":{"output_tokens":%d}' % self.output_tokens
        events.append(_event(b"message_delta", delta + b"}"))
        events.append(_event(b"message_stop", b'{"type":"message_stop"}'))
        return events

    def malformed(self) -> list[bytes]:
        cut = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"'
        return [_event(b"content_block_delta", cut), _event(b"message_stop", b'{"type":"message_stop"}')]

    def in_band_error(self) -> bytes:
        _status, type_, message = _INBAND_ERRORS[self.beh.inband]
        error = {"type": "error", "error": {"type": type_, "message": message}}
        return _event(b"error", json.dumps(error, separators=(",", ":")).encode())

    def whole(self) -> bytes:
        texts = self.reply.texts
        message: dict[str, Any] = {
            "id": _id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self._thinking_block()
            + ([{"type": "text", "text": "".join(texts)}] if texts else self._tool_uses()),
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
        }
        if self.beh.usage:
            message["usage"] = self._usage(self.output_tokens)
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")

    def whole_in_band_error(self) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        status, type_, message = _INBAND_ERRORS[self.beh.inband]
        return status, _error_body(type_, message), ()

    def _thinking_block(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.thoughts:
            thinking = "".join(self.thoughts)
            blocks.append({"type": "thinking", "thinking": thinking, "signature": thinking_signature(thinking)})
        if self.redacted:
            blocks.append({"type": "redacted_thinking", "data": self.redacted})
        return blocks

    def _tool_uses(self) -> list[dict[str, Any]]:
        return [
            {"type": "tool_use", "id": call_id, "name": call.name, "input": json.loads(call.arguments)}
            for call, call_id in zip(self.reply.calls, self.call_ids, strict=True)
        ]

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.reply.prompt_tokens - self.cache_read - self.cache_write,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write - self.cache_write_1h,
                "ephemeral_1h_input_tokens": self.cache_write_1h,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        FakeAnthropicUpstream,
        prog="python -m tests.fakes.anthropic_upstream",
        description="Fake Anthropic Messages API upstream (POST /v1/messages).",
        api_key_env=API_KEY_ENV,
        key_help=f"require 'x-api-key: KEY' (default: ${API_KEY_ENV})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
