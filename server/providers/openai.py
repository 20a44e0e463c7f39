"""Any OpenAI-compatible Chat Completions API (`POST {base_url}/chat/completions`).

Streaming follows OpenAI's wire format: `data: {chat.completion.chunk}` events, a chunk whose choice has a
`finish_reason`, a usage chunk with `"choices": []` (asked for with `stream_options.include_usage`), then
`data: [DONE]`. An `{"error": …}` event inside the 200 stream is an in-band error. A body that ends
without [DONE] is whole after a finish_reason (some compatible servers omit [DONE]), cut before one.

Tools: `tools` as `{"type":"function","function":{name, description, parameters}}`, `tool_choice` as
"auto", "none", "required" or `{"type":"function","function":{"name":…}}`; assistant messages carry
`tool_calls` (`content` null when they have no text), tool results are `role: tool` messages with their
`tool_call_id`. Streamed tool calls are `delta.tool_calls` pieces keyed by `index`, the first with `id`
and `function.name`, the rest with `function.arguments` fragments; they become ToolCallDeltas, with the
id and name on the first piece of each call only. A piece that brings a new id under an index already
used (some compatible servers number every parallel call 0) starts a call of its own.

Structured output: `response_format` `{"type":"json_object"}` or `{"type":"json_schema","json_schema":
{name, schema, strict, description}}`; the reply's text is the JSON.

Images: a message with images has `content` as parts: its text, then one `{"type":"image_url","image_url":
{"url":…}}` per image (inline bytes as a base64 data: URL).

Prompt caching: OpenAI caches repeated prompt prefixes by itself, so a message's `cache` breakpoint is not
sent; `usage.prompt_tokens_details.cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`), part of
`prompt_tokens`, is `cached_prompt_tokens`.

Reasoning: `reasoning_effort` "low", "medium" or "high" (the client's effort, else the one nearest its
budget: up to 1024 low, up to 8192 medium; OpenAI takes no budget). OpenAI shares no reasoning text;
compatible servers that do (DeepSeek's reasoner) send `delta.reasoning_content` (`message.reasoning_content`
when unary), relayed as ReasoningDeltas when the client asked for it. `completion_tokens_details.
reasoning_tokens`, part of `completion_tokens`, is `reasoning_tokens`.

The caller's identity (`ChatRequest.user`: client and end user) is sent as `user`.

Embeddings: `POST {base_url}/embeddings` with `input` (the texts), `encoding_format: "float"`, `dimensions`
when the client set it and `user`; the answer's `data[].embedding` are placed by their `index` (each index
once, one per text) and `usage.prompt_tokens` is the usage. OpenAI-compatible servers have no count
endpoint: CountTokens answers with the gateway's estimate (Provider.count_tokens).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

from server.config import ProviderConfig
from server.embedding import EmbedRequest, EmbedResult, estimated_usage
from server.errors import UpstreamError
from server.providers.http import EventDecoder, HTTPProvider, checked_usage, loads_object, token_count
from server.providers.images import as_data_url
from server.providers.transport import Transport
from server.providers.upstream_errors import error_for_error_type, safe_identifier
from server.providers.vectors import bad_index, check_count, checked_vector
from server.sse import ServerSentEvent
from server.tool_checks import schema_of
from server.types import (
    ChatMessage,
    ChatRequest,
    Completion,
    FinishReason,
    OutputFormat,
    ReasoningDelta,
    Role,
    SamplingParams,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    ToolMode,
    Usage,
)

__all__ = ["OpenAIProvider"]

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}
_PATH = "/chat/completions"
_EMBEDDINGS_PATH = "/embeddings"


class OpenAIProvider(HTTPProvider):
    request_id_header = "x-request-id"  # the upstream's id of its answer, for support tickets

    def __init__(self, config: ProviderConfig, *, transport: Transport | None = None) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        super().__init__(config, headers, transport=transport)

    def key_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = _body(request)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return self._stream_sse(_PATH, body, request, _OpenAIEvents(self.name, _includes(request)))

    async def complete(self, request: ChatRequest) -> Completion:
        include = _includes(request)
        return await self._post_json(_PATH, _body(request), request, lambda p: self._completion(p, include))

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        body: dict[str, Any] = {"model": request.model, "input": list(request.texts), "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user:
            body["user"] = request.user
        return await self._post_for(_EMBEDDINGS_PATH, body, request, lambda p: self._embeddings(p, request))

    def _embeddings(self, payload: dict[str, Any], request: EmbedRequest) -> EmbedResult:
        texts = len(request.texts)
        if "error" in payload:
            raise _in_band_error(self.name, payload["error"])
        data = payload["data"]
        check_count(self.name, len(data), texts)
        vectors: list[tuple[float, ...] | None] = [None] * texts
        for item in data:
            index = item["index"]
            if type(index) is not int or not 0 <= index < texts or vectors[index] is not None:
                raise bad_index(self.name)
            vectors[index] = checked_vector(self.name, item["embedding"])
        usage = payload.get("usage")
        checked = tuple(v for v in vectors if v is not None)
        if isinstance(usage, dict):
            prompt = token_count(usage.get("prompt_tokens"), "prompt_tokens", self.name)
            return EmbedResult(checked, Usage(prompt, 0, prompt))
        return EmbedResult(checked, estimated_usage(request.texts))

    def _completion(self, payload: dict[str, Any], include_reasoning: bool) -> Completion:
        if "error" in payload:
            raise _in_band_error(self.name, payload["error"])
        choice = payload["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
        reason = _FINISH_REASONS.get(choice.get("finish_reason") or "", FinishReason.UNSPECIFIED)
        usage = _usage(payload["usage"], self.name) if payload.get("usage") else None
        calls = tuple(
            ToolCall(str(c["id"]), str(c["function"]["name"]), str(c["function"].get("arguments") or ""))
            for c in message.get("tool_calls") or ()
        )
        reasoning = str(message.get("reasoning_content") or "") if include_reasoning else ""
        return Completion(text, reason, usage, tool_calls=calls, reasoning=reasoning)


class _OpenAIEvents(EventDecoder):
    __slots__ = ("_calls", "_count", "_include_reasoning")

    def __init__(self, provider: str, include_reasoning: bool = False) -> None:
        super().__init__(provider)
        self._include_reasoning = include_reasoning
        self._calls: dict[int, tuple[int, str]] = {}  # the upstream's index -> (our index, the call's id)
        self._count = 0  # calls so far

    def _tool_pieces(self, pieces: Any) -> None:
        for piece in pieces:
            raw = int(piece.get("index") or 0)
            function = piece.get("function") or {}
            call_id = piece.get("id") or ""
            known = self._calls.get(raw)
            if known is None or (call_id and call_id != known[1]):
                known = self._calls[raw] = (self._count, call_id)
                self._count += 1
                name = str(function.get("name") or "")
                self.pieces.append(ToolCallDelta(known[0], call_id, name, str(function.get("arguments") or "")))
            elif function.get("arguments"):
                self.pieces.append(ToolCallDelta(known[0], arguments=str(function["arguments"])))

    def feed(self, event: ServerSentEvent) -> str | None:
        data = event.data
        if data == "[DONE]":
            self.ended = True
            return None
        chunk = loads_object(data, self.provider)
        if "error" in chunk:
            raise _in_band_error(self.provider, chunk["error"])
        # Deltas are the hot path: one dict walk per token, no intermediate objects.
        text = None
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                text = content if text is None else text + content
            elif delta.get("tool_calls"):  # never looked at while text flows
                self._tool_pieces(delta["tool_calls"])
            elif self._include_reasoning and delta.get("reasoning_content"):
                self.pieces.append(ReasoningDelta(str(delta["reasoning_content"])))
            if choice.get("finish_reason"):
                self.reason = _FINISH_REASONS.get(choice["finish_reason"], FinishReason.UNSPECIFIED)
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"], self.provider)
        return text


def _body(request: ChatRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": message.role.value, "content": message.content}
        if message.name:
            entry["name"] = message.name
        if message.tool_calls or message.role is Role.TOOL:
            _tool_fields(entry, message)
        if message.images:
            text = [{"type": "text", "text": message.content}] if message.content else []
            entry["content"] = text + [
                {"type": "image_url", "image_url": {"url": as_data_url(image)}} for image in message.images
            ]
        messages.append(entry)
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    params = request.params
    if params.tools or params.tool_choice or params.response_format:
        _tool_options(body, params)
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.stop:
        body["stop"] = list(params.stop)
    if request.user:
        body["user"] = request.user  # who is calling (server/policy/identity.py)
    level = params.reasoning.level() if params.reasoning is not None else None
    if level is not None:
        body["reasoning_effort"] = level.name.lower()
    return body


def _includes(request: ChatRequest) -> bool:
    """Whether the request asked for the model's reasoning text."""
    return request.params.reasoning is not None and request.params.reasoning.include


def _tool_fields(entry: dict[str, Any], message: ChatMessage) -> None:
    if message.role is Role.TOOL:
        entry["tool_call_id"] = message.tool_call_id
        return
    if not message.content:
        entry["content"] = None
    entry["tool_calls"] = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
        for c in message.tool_calls
    ]


def _tool_options(body: dict[str, Any], params: SamplingParams) -> None:
    if params.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": schema_of(t.parameters),
                },
            }
            for t in params.tools
        ]
    choice = params.tool_choice
    if choice is not None and params.tools:
        if choice.mode is ToolMode.NAMED:
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = choice.mode.name.lower()
    fmt = params.response_format
    if fmt is None or fmt.kind is OutputFormat.TEXT:
        return
    if fmt.kind is OutputFormat.JSON_OBJECT:
        body["response_format"] = {"type": "json_object"}
        return
    json_schema: dict[str, Any] = {"name": fmt.name, "schema": schema_of(fmt.schema), "strict": fmt.strict}
    if fmt.description:
        json_schema["description"] = fmt.description
    body["response_format"] = {"type": "json_schema", "json_schema": json_schema}


def _in_band_error(provider: str, error: object) -> UpstreamError:
    error_type = None
    if isinstance(error, dict):
        error_type = safe_identifier(error.get("type")) or safe_identifier(error.get("code"))
    return error_for_error_type(provider, error_type)


def _usage(raw: Any, provider: str) -> Usage:
    prompt = token_count(raw.get("prompt_tokens"), "prompt_tokens", provider)
    completion = token_count(raw.get("completion_tokens"), "completion_tokens", provider)
    total = token_count(raw.get("total_tokens"), "total_tokens", provider) or prompt + completion
    usage = checked_usage(prompt, completion, total, provider)
    details = raw.get("prompt_tokens_details")
    # OpenAI's cached share of prompt_tokens; DeepSeek reports its cache hits at the top level instead.
    cached = token_count(details.get("cached_tokens"), "cached_tokens", provider) if isinstance(details, dict) else 0
    cached = cached or token_count(raw.get("prompt_cache_hit_tokens"), "prompt_cache_hit_tokens", provider)
    if cached:
        usage = replace(usage, cached_prompt_tokens=min(cached, prompt))
    completion_details = raw.get("completion_tokens_details")
    reasoning = (
        token_count(completion_details.get("reasoning_tokens"), "reasoning_tokens", provider)
        if isinstance(completion_details, dict)
        else 0
    )
    if reasoning:
        usage = replace(usage, reasoning_tokens=min(reasoning, completion))
    return usage
