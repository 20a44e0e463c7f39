"""A fake Google Gemini API upstream (Generative Language API v1beta) for tests and benchmarks.

A real HTTP/1.1 server on ``127.0.0.1`` (see ``http_server.py``, which also describes the model-name
behaviour grammar shared by every fake). The model is the one in the URL; ``RecordedRequest.model`` is
therefore None here, and tests read ``path``. It speaks the wire format of Google's public reference:

* ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` -> 200 ``text/event-stream``, every
  event ``data: <GenerateContentResponse>\\r\\n\\r\\n`` (Google ends SSE lines with CRLF) in one HTTP
  chunk, its JSON written as Google's streaming front end writes it (``"key": value`` pairs joined by
  bare commas): one event per piece with ``candidates[0].content.parts[0].text`` and a running
  ``usageMetadata`` (prompt and total only), then an event with an empty text part, ``finishReason``
  (``STOP`` or ``MAX_TOKENS``) and the whole ``usageMetadata``. There is no end event: the body ends.
  Without ``alt=sse`` the fake refuses with 400 (the real API would answer a JSON array).
* ``POST /v1beta/models/{model}:generateContent`` -> 200 ``application/json; charset=UTF-8``: one
  GenerateContentResponse, pretty-printed as Google prints it.
* ``POST /v1beta/models/{model}:batchEmbedContents``: ``requests[]``, each ``model`` "models/{model}",
  ``content.parts[].text``, optional ``taskType`` (one of the API's) and ``outputDimensionality``; answered
  ``{"embeddings": [{"values": […]}]}`` in order, no usage (``embeddings.py``; ``embed-short``: a vector too
  few). ``POST …:countTokens``: exactly one of ``contents`` or ``generateContentRequest`` (with its
  ``model``, checked like a generateContent body); answered ``totalTokens`` and ``promptTokensDetails``, the
  words of the system instruction and the contents (the same request's ``promptTokenCount``). Both take the
  HTTP faults and hold()/release() as generateContent does.
* Keys: when the fake was given ``api_key``, ``x-goog-api-key`` must carry it: missing -> 403
  PERMISSION_DENIED ("Method doesn't allow unregistered callers …"), wrong -> 400 INVALID_ARGUMENT with
  ErrorInfo reason ``API_KEY_INVALID``, as Google answers. A ``key=`` query parameter is refused with a
  400 that says why and is counted in ``keys_in_url``: the gateway must never put a key in a URL.
* The body is checked like the API checks it: unknown fields, at the top or in ``generationConfig``,
  are "Invalid JSON payload received. Unknown name …"; ``contents`` must be there; roles must be
  ``user`` or ``model`` ("Please use a valid role: user, model.").
* Errors: ``{"error": {"code", "message", "status", "details"?}}``: ``fault-400`` INVALID_ARGUMENT,
  ``fault-401`` UNAUTHENTICATED, ``fault-403`` PERMISSION_DENIED, ``fault-404`` NOT_FOUND,
  ``fault-429`` RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` ``retryDelay: "7s"`` in ``details``
  and no Retry-After header (``fault-429-ms``: ``"1.500s"``; ``fault-429-no-retry-after``: no RetryInfo),
  ``fault-500`` INTERNAL, ``fault-503`` UNAVAILABLE, ``fault-504`` DEADLINE_EXCEEDED; ``fault-502`` is the
  front end's HTML page.
* In-band errors are ``data: {"error": {…}}`` events (503 UNAVAILABLE, 429 RESOURCE_EXHAUSTED, 400
  INVALID_ARGUMENT); a non-streaming ``fault-inband-*`` answers with that HTTP error instead.
* ``fault-malformed`` sends a truncated event; ``fault-cut-mid`` ends the body after two pieces, before
  any ``finishReason``.
* ``refusal``: the prompt is blocked: one event with ``promptFeedback.blockReason`` and no candidates.
* ``no-usage`` leaves ``usageMetadata`` out of every event.
* Image parts: ``inlineData`` ``{mimeType, data}`` or ``fileData`` ``{mimeType, fileUri}`` (both fields
  required, else 400); they add nothing to the prompt's words.
* ``generationConfig.thinkingConfig`` (``thinkingBudget`` -1 to 24576, else 400) with a budget other than 0
  makes the echo think first (``http_server.py``): ``usageMetadata.thoughtsTokenCount`` counts the
  thoughts (apart from ``candidatesTokenCount``, within ``totalTokenCount``), and with ``includeThoughts``
  a stream sends one event per thought piece, a part ``{"text": …, "thought": true}``, before the text; a
  whole answer's first part is the whole thought summary.
* ``cached-N`` adds ``cachedContentTokenCount`` N (part of ``promptTokenCount``) and ``cacheTokensDetails``
  to ``usageMetadata``, as implicit caching reports a prefix read from the cache.
* Tools (``http_server.py`` says which the echo calls): ``tools[].functionDeclarations[]`` with a
  ``name``; the choice from ``toolConfig.functionCallingConfig`` (``AUTO``, ``NONE``, ``ANY``, and ANY with
  one ``allowedFunctionNames`` entry is that tool). Gemini sends function calls whole: one event whose
  content holds a ``functionCall`` part (``name``, ``args`` as an object, no id) per call, with
  ``finishReason: STOP`` and the whole ``usageMetadata``; a whole answer has the same candidate. A last
  user content of ``functionResponse`` parts is answered with their ``response.result`` (or the compact
  JSON of ``response``); a ``functionResponse`` without ``name`` is refused as the API refuses it.
  ``generationConfig.responseMimeType: application/json`` asks for the JSON answer.
* Thought signatures, when the echo thinks: the first ``functionCall`` part of a reply carries
  ``thoughtSignature`` (the fake's MAC of the call's name and arguments, :func:`thought_signature`), and a
  text reply's last part carries one too (a stream's final event, on its empty text part). Sent back, as
  Gemini 3 checks them: with thinking on, the first ``functionCall`` part of every model content after the
  last user text (the current turn) must carry its own signature, or Google's placeholder
  ``skip_thought_signature_validator`` ("Function call `<name>` in the `<i>.` content block is missing a
  `thought_signature`."); a signature on a functionCall part that is neither is "Corrupted thought
  signature.", one that is not base64 is refused as the API refuses bad bytes.

CLI: ``python -m tests.fakes.gemini_upstream --port 0 [--api-key KEY]`` prints ``PORT <n>``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, unquote

from tests.fakes.embeddings import FAKE_DIMENSIONS, SHORT, fake_vector, word_count
from tests.fakes.http_server import (
    Aborted,
    Behaviour,
    Conn,
    FakeHTTPServer,
    Out,
    Reply,
    Request,
    Wire,
    json_text,
    parse_behaviour,
    plan_reply,
    plan_tool_calls,
    run_cli,
    text_of,
    thought_pieces,
)

__all__ = ["FakeGeminiUpstream"]

log = logging.getLogger(__name__)

API_KEY_ENV = "FAKE_GEMINI_REQUIRED_API_KEY"
_JSON = "application/json; charset=UTF-8"
_PATH = re.compile(r"/v1beta/models/([^/:]+):(streamGenerateContent|generateContent|batchEmbedContents|countTokens)")
_TASK_TYPES = frozenset(
    {
        *("TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY"),
        *("CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY"),
    }
)
_FIELDS = frozenset(
    {"contents", "systemInstruction", "generationConfig", "safetySettings", "tools", "toolConfig", "cachedContent"}
)
MAX_THINKING_BUDGET = 24576  # Gemini 2.5 Flash's
_CONFIG_FIELDS = frozenset(
    {
        "temperature",
        "topP",
        "topK",
        "maxOutputTokens",
        "stopSequences",
        "candidateCount",
        "presencePenalty",
        "frequencyPenalty",
        "seed",
        "responseMimeType",
        "responseSchema",
        "thinkingConfig",
    }
)
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
_QUOTA_FAILURE = {
    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
    "violations": [
        {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
            "quotaValue": "10",
        }
    ],
}
# model -> (HTTP status, canonical status, message, details)
_HTTP_FAULTS: dict[str, tuple[int, str, str, list[dict[str, Any]]]] = {
    "fault-400": (400, "INVALID_ARGUMENT", "Request contains an invalid argument.", []),
    "fault-401": (
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
        "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        [{"@type": _ERROR_INFO, "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED", "domain": "googleapis.com"}],
    ),
    "fault-403": (403, "PERMISSION_DENIED", "The caller does not have permission", []),
    "fault-404": (
        404,
        "NOT_FOUND",
        "models/fault-404 is not found for API version v1beta, or is not supported for generateContent.",
        [],
    ),
    "fault-429": (
        429,
        "RESOURCE_EXHAUSTED",
        _QUOTA_MESSAGE,
        [_QUOTA_FAILURE, {"@type": _RETRY_INFO, "retryDelay": "7s"}],
    ),
    "fault-429-ms": (
        429,
        "RESOURCE_EXHAUSTED",
        _QUOTA_MESSAGE,
        [_QUOTA_FAILURE, {"@type": _RETRY_INFO, "retryDelay": "1.500s"}],
    ),
    "fault-429-no-retry-after": (429, "RESOURCE_EXHAUSTED", _QUOTA_MESSAGE, [_QUOTA_FAILURE]),
    "fault-500": (
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
        [],
    ),
    "fault-503": (503, "UNAVAILABLE", "The model is overloaded. Please try again later.", []),
    "fault-504": (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.", []),
}
# Google's front end answers a 502 itself, with an HTML page.
_BAD_GATEWAY = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 502 (Server Error)!!1</title>\n"
    "  <p><b>502.</b> <ins>That\u2019s an error.</ins>\n  <p>The server encountered a temporary error and could "
    "not complete your request.<p>Please try again in 30 seconds.  <ins>That\u2019s all we know.</ins>\n"
).encode()
_INBAND_ERRORS = {
    "error": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "ratelimit": (429, "RESOURCE_EXHAUSTED", _QUOTA_MESSAGE),
    "invalid": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
}


@functools.lru_cache(maxsize=1024)
def _behaviour(model: str) -> Behaviour | None:
    if model == "refusal":
        return Behaviour("refusal")
    return parse_behaviour(model, {*_HTTP_FAULTS, "fault-502"})


def _error(status: int, canonical: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": canonical}
    if details:
        error["details"] = details
    return {"error": error}


def _pretty(obj: dict[str, Any]) -> bytes:
    """JSON as Google's API front end prints whole answers (two-space indent)."""
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"


def _sse(obj: dict[str, Any]) -> bytes:
    """One SSE event as Google's streaming front end writes it: CRLF line ends, `"key": value,"key"`."""
    return b"data: " + json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode() + b"\r\n\r\n"


class FakeGeminiUpstream(FakeHTTPServer):
    """Fake Gemini API upstream.  See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | tuple[str, ...] | None = None,
        signing_secret: str | None = None,
    ) -> None:
        super().__init__(host=host, port=port, api_key=api_key, signing_secret=signing_secret)
        self.keys_in_url = 0  # requests that carried a key= query parameter

    def vendor_headers(self, content_type: str) -> list[bytes]:
        lines = [b"vary: Origin", b"vary: X-Origin", b"vary: Referer"]
        if content_type.startswith("text/event-stream"):
            lines.append(b"content-disposition: attachment")
        return [
            *lines,
            b"server: scaffolding on HTTPServer2",
            b"x-xss-protection: 0",
            b"x-frame-options: SAMEORIGIN",
            b"x-content-type-options: nosniff",
            b"server-timing: gfet4t7; dur=%d" % (100 + secrets.randbelow(400)),
        ]

    def model_of(self, req: Request) -> str | None:
        match = _PATH.fullmatch(req.path)
        return unquote(match.group(1)) if match else None

    async def send_framing_error(self, out: Out, status: int, message: str) -> None:
        await self._send_error(out, status, "INVALID_ARGUMENT", message, keep_alive=False)

    async def _send_error(
        self,
        out: Out,
        status: int,
        canonical: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        keep_alive: bool,
    ) -> bool:
        body = _pretty(_error(status, canonical, message, details))
        return await self.send_body(out, status, body, content_type=_JSON, keep_alive=keep_alive)

    async def _not_generating(self, out: Out, conn: Conn, raw: bytes, model: str, method: str, keep: bool) -> bool:
        """``:batchEmbedContents`` (``requests[]``, each ``model`` "models/{the URL's model}", ``content``
        with text parts, optional ``taskType`` and ``outputDimensionality``; answered ``embeddings[].values``
        in order, no usage) and ``:countTokens`` (exactly one of ``contents`` or ``generateContentRequest``,
        the latter with its ``model``; answered ``totalTokens`` and ``promptTokensDetails``, the words of the
        system instruction and the contents, as the same request's promptTokenCount)."""
        problem, answer = (_embed_answer if method == "batchEmbedContents" else _count_answer)(raw, model)
        if problem:
            return await self._send_error(out, 400, "INVALID_ARGUMENT", problem, keep_alive=keep)
        beh = _behaviour(model)
        if beh is None:
            message = f"models/{model} is not found for API version v1beta, or is not supported for {method}."
            return await self._send_error(out, 404, "NOT_FOUND", message, keep_alive=keep)
        if beh.fault == "fault-502":
            html = "text/html; charset=UTF-8"
            return await self.send_body(out, 502, _BAD_GATEWAY, content_type=html, keep_alive=keep)
        if beh.kind == "http-error":
            status, canonical, message, details = _HTTP_FAULTS[beh.fault]
            return await self._send_error(out, status, canonical, message, details, keep_alive=keep)
        if beh.kind == "reset-before":
            conn.rst()
            raise Aborted
        await out.until_open(self._started_gate())
        return await self.send_body(out, 200, _pretty(answer), content_type=_JSON, keep_alive=keep)

    async def respond(self, conn: Conn, req: Request) -> bool:
        keep = req.keep_alive
        out = Out(conn, False)
        query = parse_qs(req.target.partition("?")[2])
        if "key" in query:
            self.keys_in_url += 1
            log.error("fake Gemini upstream: an API key was sent in the URL (key=…)")
            message = "fake Gemini upstream: the API key was sent in the URL; send it in the x-goog-api-key header"
            return await self._send_error(out, 400, "INVALID_ARGUMENT", message, keep_alive=keep)
        match = _PATH.fullmatch(req.path)
        if match is None or req.method != "POST":
            message = f"The requested URL {req.path} was not found on this server."
            return await self._send_error(out, 404, "NOT_FOUND", message, keep_alive=keep)
        model, method = unquote(match.group(1)), match.group(2)
        stream = method == "streamGenerateContent"
        if stream and query.get("alt") != ["sse"]:
            message = "fake Gemini upstream: only alt=sse streams are implemented"
            return await self._send_error(out, 400, "INVALID_ARGUMENT", message, keep_alive=keep)
        if self._api_keys is not None:
            key = req.headers.get("x-goog-api-key", "")
            if not key:
                message = (
                    "Method doesn't allow unregistered callers (callers without established identity). "
                    "Please use API Key or other form of API consumer identity to call this API."
                )
                return await self._send_error(out, 403, "PERMISSION_DENIED", message, keep_alive=keep)
            if not self.key_accepted(key):
                details = [
                    {
                        "@type": _ERROR_INFO,
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ]
                message = "API key not valid. Please pass a valid API key."
                return await self._send_error(out, 400, "INVALID_ARGUMENT", message, details, keep_alive=keep)
        if (signature_problem := self.signature_problem(req)) is not None:
            message = f"Request had invalid authentication credentials: {signature_problem}."
            return await self._send_error(out, 401, "UNAUTHENTICATED", message, keep_alive=keep)
        if method in ("batchEmbedContents", "countTokens"):
            return await self._not_generating(out, conn, req.body, model, method, keep)
        problem, body = _check_body(req.body)
        if problem:
            return await self._send_error(out, 400, "INVALID_ARGUMENT", problem, keep_alive=keep)
        beh = _behaviour(model)
        if beh is None:
            message = f"models/{model} is not found for API version v1beta, or is not supported for {method}."
            return await self._send_error(out, 404, "NOT_FOUND", message, keep_alive=keep)
        if beh.fault == "fault-502":
            html = "text/html; charset=UTF-8"
            return await self.send_body(out, 502, _BAD_GATEWAY, content_type=html, keep_alive=keep)
        if beh.kind == "http-error":
            status, canonical, message, details = _HTTP_FAULTS[beh.fault]
            return await self._send_error(out, status, canonical, message, details, keep_alive=keep)
        if beh.kind == "reset-before":
            conn.rst()
            raise Aborted

        prompts = [text_of((body.get("systemInstruction") or {}).get("parts"))]
        last_user = ""
        for content in body["contents"]:
            text = _text(content.get("parts"))
            prompts.append(text)
            if content.get("role", "user") == "user":
                last_user = text
        generation = body.get("generationConfig") or {}
        calls = plan_tool_calls(_tool_names(body), _tool_choice(body), last_user) if beh.kind == "echo" else ()
        if generation.get("responseMimeType") == "application/json" and not calls:
            last_user = json_text(last_user)
        reply = plan_reply(beh, prompts, last_user, generation.get("maxOutputTokens"))
        if calls:
            reply = Reply([], reply.prompt_tokens, False, [], calls)
        if beh.split:
            out = Out(conn, True)
        # Gemini sends no request id header; each answer's body names it with `responseId`.
        thinking = generation.get("thinkingConfig") or {}
        thinks = beh.kind == "echo" and thinking.get("thinkingBudget", -1) != 0
        thoughts = thought_pieces(last_user) if thinking and thinks else []
        if thoughts and (problem := _signature_problem(body)):
            return await self._send_error(out, 400, "INVALID_ARGUMENT", problem, keep_alive=keep)
        wire = _GeminiWire(beh, reply, model, self.answer_id(lambda: secrets.token_urlsafe(18)), thoughts)
        wire.show_thoughts = thinking.get("includeThoughts") is True
        return await (self.stream_reply(out, wire, keep) if stream else self.complete_reply(out, wire, keep))


_MAC_KEY = b"fake-gemini-thought"
PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"


def thought_signature(what: str) -> str:
    """The fake's thought signature of a function call (its name and compact arguments) or a reply's text."""
    return base64.b64encode(hmac.new(_MAC_KEY, what.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()).decode()


def _call_key(call: dict[str, Any]) -> str:
    return f"{call.get('name')}:{json.dumps(call.get('args') or {}, separators=(',', ':'), sort_keys=True)}"


def _signature_problem(body: dict[str, Any]) -> str:
    """Gemini 3's complaint about the current turn's function calls' thought signatures, or ""."""
    contents = body["contents"]
    start = 0  # the current turn: after the last user content with text
    for i, content in enumerate(contents):
        if content.get("role", "user") == "user" and any("text" in p for p in content.get("parts") or ()):
            start = i + 1
    for i, content in enumerate(contents):
        for part in content.get("parts") or ():
            signature = part.get("thoughtSignature")
            if signature is None:
                continue
            try:
                base64.b64decode(str(signature), altchars=b"-_", validate=True)
            except (ValueError, binascii.Error):
                return (
                    f"Invalid value at 'contents[{i}].parts[0].thought_signature' (TYPE_BYTES), Base64 decoding failed"
                )
    for i, content in enumerate(contents[start:], start):
        calls = [p for p in content.get("parts") or () if "functionCall" in p]
        if content.get("role") != "model" or not calls:
            continue
        signature = calls[0].get("thoughtSignature")
        if signature is None:
            name = calls[0]["functionCall"].get("name")
            return f"Function call `{name}` in the `{i}.` content block is missing a `thought_signature`."
        if signature not in (PLACEHOLDER_SIGNATURE, thought_signature(_call_key(calls[0]["functionCall"]))):
            return "Corrupted thought signature."
    return ""


def _text(parts: Any) -> str:
    """The text of a content's parts: text parts, and the result of functionResponse parts."""
    texts = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("functionResponse"), dict):
            response = part["functionResponse"].get("response") or {}
            result = response.get("result")
            texts.append(result if isinstance(result, str) else json.dumps(response, separators=(",", ":")))
    return "\n".join(texts)


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [str(d["name"]) for tool in body.get("tools") or () for d in tool.get("functionDeclarations") or ()]


def _tool_choice(body: dict[str, Any]) -> str:
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = calling.get("mode", "AUTO")
    allowed = calling.get("allowedFunctionNames") or []
    if mode == "ANY":
        return str(allowed[0]) if len(allowed) == 1 else "required"
    return "none" if mode == "NONE" else "auto"


def _embed_answer(raw: bytes, model: str) -> tuple[str, Any]:
    """("", the batchEmbedContents answer) or (the API's complaint, None)."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return "Invalid JSON payload received. Unexpected token.", None
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return "* BatchEmbedContentsRequest.requests: requests must not be empty", None
    if len(requests) > 100 * 1024:
        return "* BatchEmbedContentsRequest.requests: too many requests", None
    texts = []
    for i, request in enumerate(requests):
        if not isinstance(request, dict) or request.get("model") != f"models/{model}":
            return f"* BatchEmbedContentsRequest.requests[{i}].model: the model must be models/{model}", None
        parts = (request.get("content") or {}).get("parts")
        if not isinstance(parts, list) or not parts or not all(isinstance(p.get("text"), str) for p in parts):
            return f"* BatchEmbedContentsRequest.requests[{i}].content: contents must have text parts", None
        task = request.get("taskType", "TASK_TYPE_UNSPECIFIED")
        if task not in _TASK_TYPES:
            return f"Invalid value at 'requests[{i}].task_type', \"{str(task)[:32]}\"", None
        size = request.get("outputDimensionality", FAKE_DIMENSIONS)
        if type(size) is not int or size < 1:
            return f"* BatchEmbedContentsRequest.requests[{i}].output_dimensionality: must be positive", None
        texts.append(("".join(p["text"] for p in parts), size))
    answered = texts[:-1] if model == SHORT else texts
    return "", {"embeddings": [{"values": fake_vector(text, size)} for text, size in answered]}


def _count_answer(raw: bytes, model: str) -> tuple[str, Any]:
    """("", the countTokens answer) or (the API's complaint, None)."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return "Invalid JSON payload received. Unexpected token.", None
    if not isinstance(body, dict) or ("contents" in body) == ("generateContentRequest" in body):
        return "* CountTokensRequest: exactly one of contents or generate_content_request must be set", None
    if "contents" in body:
        request: Any = {"contents": body["contents"]}
    else:
        request = dict(body["generateContentRequest"])
        if request.pop("model", None) != f"models/{model}":
            return "* GenerateContentRequest.model: the model must be models/" + model, None
        problem, request = _check_body(json.dumps(request).encode())
        if problem:
            return problem, None
    texts = [text_of((request.get("systemInstruction") or {}).get("parts"))]
    texts += [_text(content.get("parts")) for content in request.get("contents") or ()]
    total = word_count(texts)
    return "", {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}


def _check_body(raw: bytes) -> tuple[str, Any]:
    """("", body) for a body the API accepts, else (the API's complaint, None)."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return "Invalid JSON payload received. Unexpected token.", None
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object.", None
    for name in body:
        if name not in _FIELDS:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.', None
    for name in body.get("generationConfig") or {}:
        if name not in _CONFIG_FIELDS:
            return (
                f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config': Cannot find field.",
                None,
            )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n", None
    thinking = (body.get("generationConfig") or {}).get("thinkingConfig")
    if thinking is not None:
        budget = thinking.get("thinkingBudget", -1) if isinstance(thinking, dict) else None
        if not isinstance(budget, int) or not -1 <= budget <= MAX_THINKING_BUDGET:
            return (
                f"The thinking budget {budget} is invalid. Please choose a value between 0 and {MAX_THINKING_BUDGET}.",
                None,
            )
    for content in contents:
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            return "Please use a valid role: user, model.", None
        for part in content.get("parts") or ():
            for key, field in (("inlineData", "data"), ("fileData", "fileUri")):
                blob = part.get(key) if isinstance(part, dict) else None
                if blob is not None and not (isinstance(blob, dict) and blob.get("mimeType") and blob.get(field)):
                    return f"* GenerateContentRequest.contents.parts.{key}: mimeType and {field} are required.\n", None
            response = part.get("functionResponse") if isinstance(part, dict) else None
            if isinstance(response, dict) and not response.get("name"):
                return "* GenerateContentRequest.contents.parts.function_response.name: Name cannot be empty.\n", None
    return "", body


class _GeminiWire(Wire):
    """GenerateContentResponse objects, as SSE events or one whole answer."""

    json_type = _JSON

    def __init__(
        self, beh: Behaviour, reply: Reply, model: str, response_id: str, thoughts: list[str] | None = None
    ) -> None:
        super().__init__(beh, reply, model)
        self.thoughts = thoughts or []
        self.show_thoughts = False  # includeThoughts: the thoughts' parts are sent, not only counted
        self.trailer = {"modelVersion": model, "responseId": response_id}
        self.finish = "MAX_TOKENS" if reply.truncated else "STOP"  # STOP after function calls too
        # Every piece's event: the text, the running usage (prompt only), the trailer.
        running = {"usageMetadata": self._usage(None)} if beh.usage else {}
        rest = json.dumps({**running, **self.trailer}, separators=(",", ": ")).encode()
        self.piece_pre = b'data: {"candidates": [{"content": {"parts": [{"text": '
        self.piece_post = b'}],"role": "model"},"index": 0}],' + rest[1:] + b"\r\n\r\n"

    def opening(self) -> list[bytes]:
        if not (self.thoughts and self.show_thoughts):
            return []
        running = {"usageMetadata": self._usage(None)} if self.beh.usage else {}
        return [
            _sse(
                {
                    "candidates": [{"content": {"parts": [{"text": t, "thought": True}], "role": "model"}, "index": 0}],
                    **running,
                    **self.trailer,
                }
            )
            for t in self.thoughts
        ]

    def piece(self, piece_json: bytes) -> bytes:
        return self.piece_pre + piece_json + self.piece_post

    def closing(self) -> list[bytes]:
        # With the function calls, when the reply makes any; a thinking reply's signature on the empty part.
        return [_sse(self._final("", signature_of="".join(self.reply.texts)))]

    def malformed(self) -> list[bytes]:
        return [b'data: {"candidates": [{"content": {"parts": [{"text": "x"\r\n\r\n']

    def in_band_error(self) -> bytes:
        return _sse(_error(*_INBAND_ERRORS[self.beh.inband]))

    def whole(self) -> bytes:
        text = "".join(self.reply.texts)
        return _pretty(self._final(text, signature_of=text))

    def whole_in_band_error(self) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        status, canonical, message = _INBAND_ERRORS[self.beh.inband]
        return status, _pretty(_error(status, canonical, message)), ()

    def _final(self, text: str, signature_of: str = "") -> dict[str, Any]:
        obj: dict[str, Any]
        if self.beh.kind == "refusal":
            obj = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}
        else:
            parts: list[dict[str, Any]] = [
                {"functionCall": {"name": call.name, "args": json.loads(call.arguments)}} for call in self.reply.calls
            ] or [{"text": text}]
            if self.thoughts:  # a thinking model signs its first call, or its text's last part
                key = _call_key(parts[0]["functionCall"]) if self.reply.calls else signature_of
                parts[0] = {**parts[0], "thoughtSignature": thought_signature(key)}
            if self.thoughts and self.show_thoughts and text:  # a whole answer: the thought summary first
                parts.insert(0, {"text": "".join(self.thoughts), "thought": True})
            candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": self.finish}
            obj = {"candidates": [{**candidate, "index": 0}]}
        if self.beh.usage:
            obj["usageMetadata"] = self._usage(self.reply.completion_tokens)
        return {**obj, **self.trailer}

    def _usage(self, candidates: int | None) -> dict[str, Any]:
        prompt = self.reply.prompt_tokens
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = prompt + (candidates or 0) + len(self.thoughts)
        cached = self.reply.cached_tokens(self.beh)
        if cached:  # part of promptTokenCount
            usage["cachedContentTokenCount"] = cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if cached:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        if self.thoughts:  # not part of candidatesTokenCount
            usage["thoughtsTokenCount"] = len(self.thoughts)
        return usage


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        FakeGeminiUpstream,
        prog="python -m tests.fakes.gemini_upstream",
        description="Fake Gemini API upstream (v1beta generateContent / streamGenerateContent?alt=sse).",
        api_key_env=API_KEY_ENV,
        key_help=f"require 'x-goog-api-key: KEY' (default: ${API_KEY_ENV})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
