"""A fake OpenAI-compatible ``/v1/chat/completions`` upstream for tests and benchmarks.

It is a real HTTP/1.1 server on ``127.0.0.1`` built directly on
:func:`asyncio.start_server` (no web framework), so every byte, every delay and
every connection reset is under our control; the HTTP machinery and the
model-name grammar are shared with the other fakes (``http_server.py``).  It
speaks the OpenAI Chat Completions wire format:

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
* ``POST /v1/embeddings`` (OpenAI's embeddings reference): ``input`` a string or 1 to 2,048 non-empty
  strings, ``encoding_format`` ``float``, ``dimensions``, ``user``; answered ``{"object":"list","data":
  [{"object":"embedding","index":i,"embedding":[…]}],"model":…,"usage":{"prompt_tokens":N,"total_tokens":N}}``
  (vectors and counts: ``embeddings.py``; ``no-usage`` leaves ``usage`` out, ``embed-short`` answers a
  vector too few, the HTTP faults and ``fault-reset-before`` fail as for chat; hold()/release() gate it).
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
``cached-N``
    Echo whose ``usage`` adds ``prompt_tokens_details`` (``cached_tokens`` N, part of ``prompt_tokens``,
    and ``audio_tokens``) and ``completion_tokens_details``, as OpenAI reports a prompt prefix read from
    its cache.
``reasoning_effort``
    ``low``, ``medium``, ``high`` (or ``minimal``; anything else is 400 ``invalid_value``): the echo thinks
    first (``http_server.py``) without showing it: ``completion_tokens`` count the thought pieces too, and
    ``completion_tokens_details.reasoning_tokens`` says how many.
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

Tools and JSON output (see ``http_server.py`` for which tools the echo calls):
``tools`` / ``tool_choice`` (``"auto"``, ``"none"``, ``"required"`` or
``{"type":"function","function":{"name":…}}``) and ``response_format``
(``json_object`` / ``json_schema``) are read as the API defines them. Streamed
tool calls are chunks whose ``delta.tool_calls`` holds one piece: the first
piece of each call carries ``index``, ``id`` (``call_`` + 24 characters),
``"type":"function"`` and ``function.name`` with ``"arguments":""`` (the first
call's also ``"role":"assistant","content":null`` and ``"refusal":null``, and
no separate role chunk is sent), the others ``index`` and
``function.arguments`` only; the finish chunk says ``"tool_calls"``. A whole
answer's ``message`` has ``"content":null`` and ``tool_calls`` with ``id``,
``type`` and ``function.{name,arguments}``. Tool messages (``role: tool``,
``tool_call_id``) count as prompt words; one last is the text echoed.

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

import functools
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.embeddings import FAKE_DIMENSIONS, SHORT, fake_vector, word_count
from tests.fakes.http_server import (
    Aborted,
    Behaviour,
    Call,
    Conn,
    Disconnect,
    FakeHTTPServer,
    Out,
    RecordedRequest,
    Reply,
    Request,
    Wire,
    json_text,
    jstr,
    parse_behaviour,
    plan_reply,
    plan_tool_calls,
    run_cli,
    text_of,
    thought_pieces,
)

__all__ = ["Disconnect", "FakeOpenAIUpstream", "RecordedRequest"]

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
SYSTEM_FINGERPRINT = "fp_fake0upstrm"
FAKE_401_KEY = "sk-fake***1234"
API_KEY_ENV = "FAKE_OPENAI_REQUIRED_API_KEY"


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


@functools.lru_cache(maxsize=1024)
def _behaviour(model: str) -> Behaviour | None:
    """Map a model name to a behaviour; None = reserved name that does not parse."""
    return parse_behaviour(model, _HTTP_FAULTS)


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(14)


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _tool_names(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools")
    names = []
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def _tool_choice(body: dict[str, Any]) -> str:
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        function = choice.get("function")
        return str(function.get("name")) if isinstance(function, dict) else "none"
    return str(choice)


def _wants_json(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}, indent=2).encode()


def _inband_event(spec: tuple[str, str, str]) -> bytes:
    message, type_, code = spec
    err = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + json.dumps(err, separators=(",", ":")).encode() + b"\n\n"


# --------------------------------------------------------------------------- the server


class FakeOpenAIUpstream(FakeHTTPServer):
    """Fake OpenAI Chat Completions upstream.  See the module docstring."""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def vendor_headers(self, content_type: str) -> list[bytes]:
        lines = [
            b"openai-organization: org-fake",
            b"openai-processing-ms: 1",
            b"openai-version: 2020-10-01",
            b"x-request-id: " + self.answer_id(lambda: "req_" + secrets.token_hex(16)).encode(),
        ]
        if content_type.startswith("text/event-stream"):
            lines.append(b"cache-control: no-cache")
        return lines

    async def send_framing_error(self, out: Out, status: int, message: str) -> None:
        await self._send_error(out, status, message, "invalid_request_error", None, keep_alive=False)

    async def _send_error(
        self,
        out: Out,
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
        return await self.send_body(out, status, body, keep_alive=keep_alive, extra=extra)

    async def respond(self, conn: Conn, req: Request) -> bool:
        keep = req.keep_alive
        out = Out(conn, False)
        path = req.path
        if path not in (CHAT_PATH, EMBEDDINGS_PATH) or req.method != "POST":
            return await self._send_error(
                out,
                404,
                f"Invalid URL ({req.method} {path})",
                "invalid_request_error",
                None,
                keep_alive=keep,
            )

        if self._api_keys is not None:
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
            if not self.key_accepted(token):
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

        if (
            key_fault := self.key_faults.get(req.headers.get("authorization", "").partition(" ")[2].strip())
        ) is not None:
            spec = _HTTP_FAULTS[key_fault]
            return await self._send_error(
                out, spec.status, spec.message, spec.type, spec.code, keep_alive=keep, extra=spec.headers
            )
        if (problem := self.signature_problem(req)) is not None:
            return await self._send_error(
                out,
                401,
                f"Invalid request signature: {problem}.",
                "invalid_request_error",
                "invalid_signature",
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
        if path == EMBEDDINGS_PATH:
            return await self._embeddings(out, conn, body, model, keep)
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
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            return await self._send_error(
                out,
                400,
                f"Invalid value: '{str(effort)[:32]}'. Supported values are: 'low', 'medium', and 'high'.",
                "invalid_request_error",
                "invalid_value",
                param="reasoning_effort",
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
            spec = _HTTP_FAULTS[beh.fault]
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
            raise Aborted

        # ---- content
        last_user = ""
        prompts: list[str] = []
        for msg in messages:
            if isinstance(msg, dict):
                text = text_of(msg.get("content"))
                prompts.append(text)
                if msg.get("role") == "user":
                    last_user = text
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
            last_user = text_of(messages[-1].get("content"))
        calls = plan_tool_calls(_tool_names(body), _tool_choice(body), last_user) if beh.kind == "echo" else ()
        if _wants_json(body) and not calls:
            last_user = json_text(last_user)
        reply = plan_reply(beh, prompts, last_user, body.get("max_tokens", body.get("max_completion_tokens")))
        if calls:
            reply = Reply([], reply.prompt_tokens, False, [], calls)
        if beh.split:
            out = Out(conn, True)
        thoughts = len(thought_pieces(last_user)) if effort is not None and beh.kind == "echo" else 0
        if stream:
            return await self.stream_reply(out, _OpenAIWire(beh, reply, model, include_usage, thoughts), keep)
        return await self.complete_reply(out, _OpenAIWire(beh, reply, model, False, thoughts), keep)

    async def _embeddings(self, out: Out, conn: Conn, body: dict[str, Any], model: str, keep: bool) -> bool:
        """``POST /v1/embeddings``: ``input`` a string or a list of 1 to 2,048 non-empty strings,
        ``encoding_format`` "float" (the default; "base64" is not implemented here), ``dimensions`` a
        positive integer, ``user`` a string; the answer is a ``list`` of ``embedding`` objects by ``index``,
        with ``usage`` (prompt_tokens = total_tokens = words)."""
        raw = body.get("input")
        texts: Any = [raw] if isinstance(raw, str) else raw
        problem = ""
        if raw is None:
            problem = "'input' is a required property"
        elif not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            problem = "'input' must be a string or an array of strings"
        elif not texts or len(texts) > 2048 or any(t == "" for t in texts):
            problem = "'input' must be a non-empty string or an array of 1 to 2048 non-empty strings"
        elif body.get("encoding_format", "float") != "float":
            problem = "fake OpenAI upstream: only encoding_format 'float' is implemented"
        dimensions = body.get("dimensions", FAKE_DIMENSIONS)
        if not problem and (type(dimensions) is not int or dimensions < 1):
            problem = "'dimensions' must be a positive integer"
        if problem:
            return await self._send_error(out, 400, problem, "invalid_request_error", None, keep_alive=keep)
        beh = _behaviour(model)
        if beh is None:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return await self._send_error(
                out, 404, message, "invalid_request_error", "model_not_found", keep_alive=keep
            )
        if beh.kind == "http-error":
            spec = _HTTP_FAULTS[beh.fault]
            return await self._send_error(
                out, spec.status, spec.message, spec.type, spec.code, keep_alive=keep, extra=spec.headers
            )
        if beh.kind == "reset-before":
            conn.rst()
            raise Aborted
        await out.until_open(self._started_gate())
        answered = texts[:-1] if model == SHORT else texts
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(text, dimensions)}
            for i, text in enumerate(answered)
        ]
        answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if beh.usage:
            words = word_count(texts)
            answer["usage"] = {"prompt_tokens": words, "total_tokens": words}
        return await self.send_body(out, 200, json.dumps(answer, separators=(",", ":")).encode(), keep_alive=keep)


class _OpenAIWire(Wire):
    """Chat Completions chunks: role, one per piece, finish, usage (when asked for), [DONE]."""

    def __init__(self, beh: Behaviour, reply: Reply, model: str, include_usage: bool, thoughts: int = 0) -> None:
        super().__init__(beh, reply, model)
        self.thoughts = thoughts  # reasoning tokens: counted, never shown
        self.finish = "tool_calls" if reply.calls else "length" if reply.truncated else "stop"
        self.call_ids = [_call_id() for _ in reply.calls]
        self.usage_on = include_usage and beh.usage
        self.tail = b',"usage":null}\n\n' if self.usage_on else b"}\n\n"
        self.prefix = (
            b'data: {"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,'
            % (
                _completion_id().encode(),
                int(time.time()),
                jstr(model),
            )
            + b'"system_fingerprint":"%b","choices":' % SYSTEM_FINGERPRINT.encode()
        )
        self.content_pre = self.prefix + b'[{"index":0,"delta":{"content":'
        self.content_post = b'},"logprobs":null,"finish_reason":null}]' + self.tail

    def opening(self) -> list[bytes]:
        if self.reply.calls:
            return []  # the first tool-call chunk carries the role
        return [
            self.prefix
            + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            + b'"logprobs":null,"finish_reason":null}]'
            + self.tail
        ]

    def piece(self, piece_json: bytes) -> bytes:
        return self.content_pre + piece_json + self.content_post

    def tool_events(self) -> list[bytes]:
        events = []
        for i, (call, call_id) in enumerate(zip(self.reply.calls, self.call_ids, strict=True)):
            head = b'"tool_calls":[{"index":%d,"id":"%b","type":"function","function":{"name":%b,"arguments":""}}]' % (
                i,
                call_id.encode(),
                jstr(call.name),
            )
            if i == 0:
                head = b'"role":"assistant","content":null,' + head + b',"refusal":null'
            events.append(self._choice_delta(head))
            for piece in call.pieces:
                events.append(
                    self._choice_delta(b'"tool_calls":[{"index":%d,"function":{"arguments":%b}}]' % (i, jstr(piece)))
                )
        return events

    def _choice_delta(self, delta: bytes) -> bytes:
        return self.prefix + b'[{"index":0,"delta":{%b},"logprobs":null,"finish_reason":null}]' % delta + self.tail

    def closing(self) -> list[bytes]:
        events = [
            self.prefix
            + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%b"}]' % self.finish.encode()
            + self.tail
        ]
        if self.usage_on:
            usage = json.dumps(_usage(self.beh, self.reply, self.thoughts), separators=(",", ":")).encode()
            events.append(self.prefix + b'[],"usage":%b}\n\n' % usage)
        events.append(b"data: [DONE]\n\n")
        return events

    def malformed(self) -> list[bytes]:
        return [b'data: {"choices":[{"delta":{"content":"x"\n\n', b"data: [DONE]\n\n"]

    def in_band_error(self) -> bytes:
        return _inband_event(_INBAND_ERRORS[self.beh.inband])

    def whole(self) -> bytes:
        texts = self.reply.texts
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts), "refusal": None}
        if self.reply.calls:
            message["content"] = None
            message["tool_calls"] = [
                _whole_call(call, call_id) for call, call_id in zip(self.reply.calls, self.call_ids, strict=True)
            ]
        obj: dict[str, Any] = {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish,
                    "logprobs": None,
                }
            ],
        }
        if self.beh.usage:
            obj["usage"] = _usage(self.beh, self.reply, self.thoughts)
        obj["system_fingerprint"] = SYSTEM_FINGERPRINT
        return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")

    def whole_in_band_error(self) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        # OpenAI-compatible servers may answer 200 with an error object.
        message, type_, code = _INBAND_ERRORS[self.beh.inband]
        return 200, _error_body(message, type_, code), ()


def _whole_call(call: Call, call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


# --------------------------------------------------------------------------- CLI


REASONING_EFFORTS = ("minimal", "low", "medium", "high")


def _usage(beh: Behaviour, reply: Reply, thoughts: int = 0) -> dict[str, Any]:
    """The usage object; with ``cached-N`` or reasoning also OpenAI's token details (cached_tokens is part
    of prompt_tokens, reasoning_tokens of completion_tokens), as the API reference shows them."""
    prompt, n = reply.prompt_tokens, reply.completion_tokens + thoughts
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
    if beh.cached or thoughts:
        usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens(beh), "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": thoughts,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        FakeOpenAIUpstream,
        prog="python -m tests.fakes.openai_upstream",
        description="Fake OpenAI-compatible /v1/chat/completions upstream.",
        api_key_env=API_KEY_ENV,
        key_help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
