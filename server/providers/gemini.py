"""Google's Gemini API (Generative Language API v1beta), natively; base_url without `/v1beta`.

`POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse` streams, `…:generateContent` answers
whole. The key travels only in the `x-goog-api-key` header, never in the URL, where it would leak into
logs, proxies and exception text.

Request mapping: user messages are `contents` of role `user`, assistant messages of role `model`, each
`parts: [{"text": …}]`; consecutive messages of one role become one content with a part each; system
messages are lifted into `systemInstruction`, a part each; `generationConfig` holds only what the client
set (`temperature`, `topP`, `maxOutputTokens`, `stopSequences`). Message `name`s are dropped, and so is
the caller's identity (`ChatRequest.user`): the API has no field for it.

Tools: `tools: [{"functionDeclarations": [{name, description, parameters}]}]`, the choice in
`toolConfig.functionCallingConfig` (`mode` AUTO, NONE, or ANY; a named tool is ANY with
`allowedFunctionNames: [name]`). An assistant message's tool calls are `functionCall` parts (`args`: the
parsed arguments) after its text; a tool message is a user content with a `functionResponse` part whose
`name` is the called tool's (found by the call id in the earlier assistant messages, else the message's
`name`) and whose `response` is the result when it is a JSON object, else `{"result": <the text>}`.
Gemini sends each `functionCall` part whole, `args` an object and no id: each becomes one ToolCallDelta
with the compact JSON of its arguments and an id the gateway makes (`call_` and 24 hex digits) unless the
part has one; a reply with calls that stops with STOP ends with TOOL_CALLS.

Structured output: `generationConfig.responseMimeType: application/json`, and for a schema
`responseSchema`. Gemini takes an OpenAPI subset of JSON Schema there and in `parameters`: types are
written upper case, `["x", "null"]` becomes `nullable`, and keywords outside the subset
(`additionalProperties`, `$schema`, `$defs`, …) are left out, so Gemini's output is guided by the rest.

Streaming: every SSE `data:` event is a whole GenerateContentResponse. The text is in
`candidates[0].content.parts[].text` (parts marked `"thought": true` are thought summaries, not reply
text, and are skipped); `candidates[0].finishReason` says why it stopped; `usageMetadata` may come with
every event and the last one counts. There is no end event: the stream is whole when the body ends after
a finishReason, cut otherwise. A prompt blocked by `promptFeedback.blockReason` has no candidates and
ends with CONTENT_FILTER and no text. An event with an `error` object is an in-band error, mapped by its
canonical `status` (RESOURCE_EXHAUSTED, UNAVAILABLE, …).

Usage: prompt tokens are `promptTokenCount` (which includes cached content) plus
`toolUsePromptTokenCount`; completion tokens are `candidatesTokenCount` plus `thoughtsTokenCount` (the
model's thinking is generated and billed as output). `cachedContentTokenCount` (part of the prompt count:
Gemini 2.5 caches repeated prefixes by itself) is `cached_prompt_tokens`. Gemini has no cache breakpoints,
so a message's `cache` is not sent. `thoughtsTokenCount` is also `reasoning_tokens`. No usageMetadata at
all is `Usage.unreported`.

Images: a user message's images follow its text as parts: `inlineData` `{mimeType, data}` for inline bytes
(and base64 data: URLs), `fileData` `{mimeType, fileUri}` for URLs (the MIME type the client gave, else
guessed from the URL).

Reasoning: `generationConfig.thinkingConfig` takes `thinkingBudget` (the client's budget, else its
effort's: low 1024, medium 8192, high 24576) and `includeThoughts` when the client asked for the reasoning
text; the thought summaries then arrive as parts with `"thought": true` and become ReasoningDeltas (the
reply's `reasoning` when unary). Without `includeThoughts` Gemini sends none (any that came would be
dropped).

Thought signatures: a part's `thoughtSignature` (Gemini 2.5 and 3 sign their function calls, and the
last part of a reply) becomes a signed ReasoningBlock of the Finish (or Completion): on a `functionCall`
part, with that call's id (`tool_call_id`); on any other part (text, a thought, an empty text part that
only carries it), without. An assistant message's own blocks (those this provider made; other providers'
are dropped) go back as they came: each call's on its `functionCall` part, the text's on the message's
text part (dropped when it has none: Gemini checks only the calls' signatures). Gemini 3 refuses a
function call of the current turn without its signature, so the first `functionCall` part of a message
that has none from this provider (a history from another provider after a fallback, or one the client
wrote) carries Google's documented placeholder `skip_thought_signature_validator`.

Finish reasons: STOP -> STOP; MAX_TOKENS -> LENGTH; SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT,
SPII, IMAGE_SAFETY -> CONTENT_FILTER; anything else (LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, …) ->
UNSPECIFIED.

Embeddings: `POST …/models/{model}:batchEmbedContents` with one `requests[]` entry per text (`model`
"models/{model}", `content.parts[0].text`, `taskType` and `outputDimensionality` when the client set them);
the answer's `embeddings[].values` come in the order of the requests. Gemini reports no usage for it, so the
usage is the gateway's estimate, marked `estimated`.

Counting: `POST …/models/{model}:countTokens` with `generateContentRequest` (the generateContent body and
the model), so that the system instruction, tools and images count too; `totalTokens` is the count, exact,
and `cachedContentTokenCount` its cached share.

Errors: Google's body is `{"error": {"code", "message", "status", "details"}}`. A bad key is answered
with HTTP 400 and ErrorInfo reason API_KEY_INVALID, which is reported as UPSTREAM_AUTH_FAILED like a
401; a `google.rpc.RetryInfo` detail's `retryDelay` becomes the RetryInfo of a rate-limit error when no
Retry-After header says when.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from server.config import ProviderConfig
from server.embedding import EmbedRequest, EmbedResult, TokenCount, estimated_usage
from server.errors import UpstreamError
from server.observe.request_id import upstream_request_id
from server.providers.http import ErrorHint, EventDecoder, HTTPProvider, checked_usage, loads_object, token_count
from server.providers.images import inline, url_mime_type
from server.providers.signed import own_blocks, signed_block
from server.providers.transport import Transport
from server.providers.upstream_errors import error_for_error_type, safe_identifier
from server.providers.vectors import check_count, checked_vector
from server.sse import ServerSentEvent
from server.tool_checks import object_of, schema_of
from server.types import (
    ChatMessage,
    ChatRequest,
    Completion,
    Finish,
    FinishReason,
    Image,
    OutputFormat,
    Reasoning,
    ReasoningBlock,
    ReasoningDelta,
    Role,
    SamplingParams,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    ToolMode,
    Usage,
)

__all__ = ["UNSIGNED_CALL", "GeminiProvider"]

_FINISH_REASONS = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
}
_ROLES = {Role.USER: "user", Role.ASSISTANT: "model", Role.TOOL: "user"}
_MODES = {ToolMode.AUTO: "AUTO", ToolMode.NONE: "NONE", ToolMode.REQUIRED: "ANY", ToolMode.NAMED: "ANY"}
# The keywords of Gemini's Schema object (an OpenAPI subset); the others are left out.
_SCHEMA_KEYS = frozenset(
    {
        *("type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties"),
        *("required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example"),
        *("anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"),
    }
)
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# Google's documented thought signature for function calls the model did not sign (history from elsewhere).
UNSIGNED_CALL = "skip_thought_signature_validator"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# google.protobuf.Duration in JSON: seconds with up to nine fractional digits and an "s".
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)s")


class GeminiProvider(HTTPProvider):
    def __init__(self, config: ProviderConfig, *, transport: Transport | None = None) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        super().__init__(config, headers, transport=transport)

    def key_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        path = f"{_model_path(request.model)}:streamGenerateContent?alt=sse"
        body = request_body(request, provider=self.name)
        return self._stream_sse(path, body, request, _GeminiEvents(self.name, _includes(request)))

    async def complete(self, request: ChatRequest) -> Completion:
        path = f"{_model_path(request.model)}:generateContent"
        include = _includes(request)
        body = request_body(request, provider=self.name)
        return await self._post_json(path, body, request, lambda p: self._completion(p, include))

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        path = f"{_model_path(request.model)}:batchEmbedContents"
        name = f"models/{request.model}"
        extra: dict[str, Any] = {}
        if request.task_type is not None:
            extra["taskType"] = request.task_type.name
        if request.dimensions is not None:
            extra["outputDimensionality"] = request.dimensions
        body = {"requests": [{"model": name, "content": {"parts": [{"text": t}]}, **extra} for t in request.texts]}
        return await self._post_for(path, body, request, lambda p: self._embeddings(p, request))

    def _embeddings(self, payload: dict[str, Any], request: EmbedRequest) -> EmbedResult:
        if "error" in payload:
            raise _in_band_error(self.name, payload["error"])
        embeddings = payload["embeddings"]
        check_count(self.name, len(embeddings), len(request.texts))
        vectors = tuple(checked_vector(self.name, item["values"]) for item in embeddings)
        return EmbedResult(vectors, estimated_usage(request.texts))

    async def count_tokens(self, request: ChatRequest) -> TokenCount:
        path = f"{_model_path(request.model)}:countTokens"
        body = {"generateContentRequest": {"model": f"models/{request.model}", **request_body(request)}}
        return await self._post_for(path, body, request, self._token_count)

    def _token_count(self, payload: dict[str, Any]) -> TokenCount:
        if "error" in payload:
            raise _in_band_error(self.name, payload["error"])
        total = token_count(payload["totalTokens"], "totalTokens", self.name)
        cached = token_count(payload.get("cachedContentTokenCount"), "cachedContentTokenCount", self.name)
        return TokenCount(total, exact=True, cached_tokens=min(cached, total))

    def _completion(self, payload: dict[str, Any], include_thoughts: bool) -> Completion:
        events = _GeminiEvents(self.name, include_thoughts)  # a whole answer has the shape of one stream event
        text = events.read(payload) or ""
        finish = events.finish()
        calls = tuple(ToolCall(d.id, d.name, d.arguments) for d in events.pieces if isinstance(d, ToolCallDelta))
        thoughts = "".join(d.text for d in events.pieces if isinstance(d, ReasoningDelta))
        return Completion(
            text,
            finish.reason,
            finish.usage,
            upstream_request_id=finish.upstream_request_id,
            tool_calls=calls,
            reasoning=thoughts,
            reasoning_blocks=finish.reasoning_blocks,
        )

    def _error_hint(self, error: Mapping[str, Any]) -> ErrorHint:
        # ErrorInfo's reason (API_KEY_INVALID) says more than the canonical status (INVALID_ARGUMENT).
        reason, retry_after_s = _details(error)
        return reason or safe_identifier(error.get("status")), retry_after_s


class _GeminiEvents(EventDecoder):
    __slots__ = ("_calls", "_include_thoughts", "_response_id", "_signed", "_usage_metadata")

    def __init__(self, provider: str, include_thoughts: bool = False) -> None:
        super().__init__(provider)
        self._include_thoughts = include_thoughts
        self._usage_metadata: Any = None  # the latest usageMetadata; Gemini repeats it on every event
        # Gemini sends no request id header; its answer's `responseId` (read with the finish reason) is
        # the id to quote to Google.
        self._response_id: Any = None
        self._calls = 0
        self._signed: list[ReasoningBlock] = []  # the reply's thought signatures, in order

    def finish(self) -> Finish:
        self.usage = usage_from(self._usage_metadata, self.provider) if self._usage_metadata else None
        if self._calls and self.reason is FinishReason.STOP:
            self.reason = FinishReason.TOOL_CALLS
        finish = super().finish()
        if self._signed:
            finish = replace(finish, reasoning_blocks=tuple(self._signed))
        if isinstance(self._response_id, str):
            return replace(finish, upstream_request_id=upstream_request_id(self._response_id))
        return finish

    def feed(self, event: ServerSentEvent) -> str | None:
        return self.read(loads_object(event.data, self.provider))

    def read(self, chunk: dict[str, Any]) -> str | None:
        """The text of one GenerateContentResponse; notes its finish reason and usage."""
        if "error" in chunk:
            raise _in_band_error(self.provider, chunk["error"])
        if chunk.get("usageMetadata"):
            self._usage_metadata = chunk["usageMetadata"]
        candidates = chunk.get("candidates")
        if not candidates:
            if (chunk.get("promptFeedback") or {}).get("blockReason"):
                self.reason = FinishReason.CONTENT_FILTER
            return None
        candidate = candidates[0]
        if candidate.get("finishReason"):
            self.reason = _FINISH_REASONS.get(candidate["finishReason"], FinishReason.UNSPECIFIED)
            self._response_id = chunk.get("responseId")
        text = None
        for part in (candidate.get("content") or {}).get("parts") or ():
            piece = part.get("text")
            call_id = ""
            if piece and not part.get("thought"):
                text = piece if text is None else text + piece
            elif "functionCall" in part:
                call_id = self._function_call(part["functionCall"])
            elif piece and self._include_thoughts:
                self.pieces.append(ReasoningDelta(piece))
            if "thoughtSignature" in part:
                signature = part["thoughtSignature"]
                self._signed.append(signed_block(self.provider, signature=signature, tool_call_id=call_id))
        return text

    def _function_call(self, call: dict[str, Any]) -> str:
        call_id = str(call.get("id") or "") or "call_" + secrets.token_hex(12)
        arguments = json.dumps(call.get("args") or {}, separators=(",", ":"), ensure_ascii=False)
        self.pieces.append(ToolCallDelta(self._calls, call_id, str(call["name"]), arguments))
        self._calls += 1
        return call_id


def request_body(request: ChatRequest, *, provider: str = "") -> dict[str, Any]:
    """The generateContent body for `request` (the model is in the URL), sent to the provider named
    `provider` (the thought signatures it made go back to it; others are dropped)."""
    system: list[dict[str, str]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> the tool's name, for functionResponse
    for message in request.messages:
        if message.role is Role.SYSTEM:
            system.append({"text": message.content})
            continue
        parts = (
            _parts(message, names) if message.tool_calls or message.role is Role.TOOL else [{"text": message.content}]
        )
        if message.images:
            parts = [part for part in parts if part.get("text") != ""] + [_image_part(i) for i in message.images]
        if message.tool_calls or message.reasoning_blocks:
            _sign(parts, own_blocks(message, provider), message.tool_calls)
        role = _ROLES[message.role]
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    params = request.params
    config: dict[str, Any] = {}
    if params.temperature is not None:
        config["temperature"] = params.temperature
    if params.top_p is not None:
        config["topP"] = params.top_p
    if params.max_tokens is not None:
        config["maxOutputTokens"] = params.max_tokens
    if params.stop:
        config["stopSequences"] = list(params.stop)
    fmt = params.response_format
    if fmt is not None and fmt.kind is not OutputFormat.TEXT:
        config["responseMimeType"] = "application/json"
        if fmt.kind is OutputFormat.JSON_SCHEMA:
            config["responseSchema"] = gemini_schema(schema_of(fmt.schema))
    if params.reasoning is not None:
        thinking = _thinking_config(params.reasoning)
        if thinking:
            config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    if params.tools:
        _tool_options(body, params)
    return body


def _sign(parts: list[dict[str, Any]], signed: tuple[ReasoningBlock, ...], calls: tuple[ToolCall, ...]) -> None:
    """Put each thought signature back on the part it came on: a call's on its functionCall part (the parts
    end with one per call, in order), the text's on the text's part (none without text); the first call's
    part without one gets the placeholder."""
    if not parts:
        return
    first_call = len(parts) - len(calls)
    if calls:  # replaced below when the call has its own
        parts[first_call] = {**parts[first_call], "thoughtSignature": UNSIGNED_CALL}
    by_call = {call.id: first_call + i for i, call in enumerate(calls)}
    for block in signed:
        index = by_call.get(block.tool_call_id, -1) if block.tool_call_id else first_call - 1
        if index >= 0 and (block.tool_call_id or "thoughtSignature" not in parts[index]):
            parts[index] = {**parts[index], "thoughtSignature": block.signature}


def _image_part(image: Image) -> dict[str, Any]:
    data = inline(image)
    if data is None:
        return {"fileData": {"mimeType": url_mime_type(image), "fileUri": image.url}}
    return {"inlineData": {"mimeType": data[0], "data": data[1]}}


def _thinking_config(reasoning: Reasoning) -> dict[str, Any]:
    thinking: dict[str, Any] = {}
    budget = reasoning.budget()
    if budget is not None:
        thinking["thinkingBudget"] = budget
    if reasoning.include:
        thinking["includeThoughts"] = True
    return thinking


def _includes(request: ChatRequest) -> bool:
    """Whether the request asked for the model's thought summaries."""
    return request.params.reasoning is not None and request.params.reasoning.include


def _parts(message: ChatMessage, names: dict[str, str]) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        name = names.get(message.tool_call_id) or message.name
        try:
            result = json.loads(message.content)
        except ValueError:
            result = None
        response = result if isinstance(result, dict) else {"result": message.content}
        return [{"functionResponse": {"name": name, "response": response}}]
    parts: list[dict[str, Any]] = [{"text": message.content}] if message.content else []
    for call in message.tool_calls:
        names[call.id] = call.name
        parts.append({"functionCall": {"name": call.name, "args": object_of(call.arguments)}})
    return parts


def _tool_options(body: dict[str, Any], params: SamplingParams) -> None:
    declarations = []
    for tool in params.tools:
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        if tool.parameters:
            declaration["parameters"] = gemini_schema(schema_of(tool.parameters))
        declarations.append(declaration)
    body["tools"] = [{"functionDeclarations": declarations}]
    choice = params.tool_choice
    if choice is not None:
        calling: dict[str, Any] = {"mode": _MODES[choice.mode]}
        if choice.mode is ToolMode.NAMED:
            calling["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": calling}


def gemini_schema(schema: Any) -> Any:
    """A JSON Schema in Gemini's OpenAPI subset (see the module docstring); a new object each time."""
    if isinstance(schema, list):
        return [gemini_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            continue
        if key == "type":
            types = [t for t in (value if isinstance(value, list) else [value]) if t != "null"]
            if isinstance(value, list) and "null" in value:
                out["nullable"] = True
            if types:
                out["type"] = str(types[0]).upper()
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = gemini_schema(value)
        else:
            out[key] = value
    return out


def usage_from(raw: Any, provider: str) -> Usage:
    def count(name: str) -> int:
        return token_count(raw.get(name), name, provider)

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    completion = count("candidatesTokenCount") + count("thoughtsTokenCount")
    # promptTokenCount includes the cached content's tokens (implicit or explicit caching).
    cached = min(count("cachedContentTokenCount"), prompt)
    usage = checked_usage(prompt, completion, prompt + completion, provider)
    return replace(usage, reasoning_tokens=count("thoughtsTokenCount"), cached_prompt_tokens=cached)


def _model_path(model: str) -> str:
    # Quoted whole, so that a model name cannot walk to another path ("../") on the key-carrying host.
    return f"/v1beta/models/{quote(model, safe='')}"


def _details(error: Mapping[str, Any]) -> ErrorHint:
    """ErrorInfo's reason and RetryInfo's delay from a Google error's `details`, where present."""
    reason: str | None = None
    retry_after_s: float | None = None
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == _ERROR_INFO:
            reason = safe_identifier(detail.get("reason"))
        elif detail.get("@type") == _RETRY_INFO:
            delay = detail.get("retryDelay")
            match = _DURATION.fullmatch(delay) if isinstance(delay, str) else None
            retry_after_s = float(match.group(1)) if match else None
    return reason, retry_after_s


def _in_band_error(provider: str, error: object) -> UpstreamError:
    # Classified by the canonical status: ErrorInfo reasons are too many to know.
    if not isinstance(error, dict):
        return error_for_error_type(provider, None)
    return error_for_error_type(provider, safe_identifier(error.get("status")), _details(error)[1])
