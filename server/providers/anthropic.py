"""Anthropic's Messages API, natively (`POST {base_url}/v1/messages`, base_url without `/v1`).

Request mapping:
- the key goes in `x-api-key`, with `anthropic-version: 2023-06-01`;
- system messages are lifted into the top-level `system`, joined with a blank line when there are
  several (wherever they stood in the conversation), or one text block each when one of them is a cache
  breakpoint;
- the Messages API wants user and assistant turns to alternate, so consecutive messages of one role
  (also those that a lifted system message separated) are merged into one message whose content is a
  list of text blocks, one per original message; a single message keeps a plain string `content`;
- `max_tokens` is always sent (Anthropic requires it): the client's, else the model's output limit;
- `temperature`, `top_p` and `stop` (as `stop_sequences`) are sent only when set. Message `name`s have
  no place in the Messages API and are dropped. The caller's identity (`ChatRequest.user`) goes in
  `metadata.user_id`. Values Anthropic refuses (a temperature above 1, say)
  are left for it to refuse: the client then sees INVALID_ARGUMENT from the upstream.

Tools: `tools` as `{name, description, input_schema}`; tool choice auto -> `{"type":"auto"}`, none ->
`{"type":"none"}`, required -> `{"type":"any"}`, named -> `{"type":"tool","name":…}`. An assistant
message's tool calls become `tool_use` blocks (`input` is the parsed arguments) after its text; a tool
message becomes a user message with one `tool_result` block (`tool_use_id`, the result text), merged with
the user turns around it like any user message.

Images: a user message's images follow its text as `image` blocks, `{"type":"base64","media_type":…,
"data":…}` sources for inline bytes (and base64 data: URLs), `{"type":"url","url":…}` for the rest.

Prompt caching: a message with `cache` (the client's `cache_control`) puts `cache_control: {"type":
"ephemeral"}` on its last content block (a plain-string message becomes one text block for it), so
Anthropic caches the prompt up to there.

Reasoning: `thinking: {"type": "enabled", "budget_tokens": …}` (the client's budget, else its effort's:
low 1024, medium 8192, high 24576; at least Anthropic's minimum of 1024). Anthropic's `max_tokens` counts
the thinking as well, so a client's max_tokens is sent plus the budget. Streamed `thinking_delta`s become
ReasoningDeltas when the client asked for the reasoning text, and are dropped otherwise; `signature_delta`s
(the thinking block's signature) and `redacted_thinking` blocks are dropped. A whole answer's `thinking`
blocks are its `reasoning`. Anthropic reports no separate count of thinking tokens: they are in
`output_tokens`, and `reasoning_tokens` stays 0. (Anthropic refuses `temperature` and forced tool
choices, so JSON output, with thinking: such a call is INVALID_ARGUMENT from the upstream.)

Structured output: the Messages API has no JSON mode, so the gateway asks for it with a forced tool, as
Anthropic documents: one more tool named after the schema (`json_output` for a JSON object) whose
`input_schema` is the schema, and `tool_choice` `{"type":"tool"}` naming it (`{"type":"any"}` when the
client declared tools of its own and left the choice to the model). That tool's input is the reply's
text: streamed from its `input_json_delta`s, whole as compact JSON, and its `tool_use` stop is STOP.

Streaming (`event:` + `data:` lines): `message_start` carries the input usage, `content_block_delta`
events with a `text_delta` carry the text, `content_block_start` of a `tool_use` block opens a tool call
(its id and name) and its `input_json_delta`s carry the arguments' fragments (`thinking_delta`s: see
Reasoning), `message_delta` the stop reason and the cumulative
output usage, `message_stop` ends the stream; `ping` and block stops carry nothing we need. An `error`
event is an in-band error, mapped by its `error.type`. A body that ends without `message_stop` is whole
only if a stop reason arrived.

Usage: prompt tokens are `input_tokens` plus `cache_creation_input_tokens` and `cache_read_input_tokens`
(Anthropic counts cached prompt tokens apart; OpenAI's `prompt_tokens` include them, so this keeps one
meaning); of them, `cache_read_input_tokens` are `cached_prompt_tokens` and `cache_creation_input_tokens`
`cache_write_tokens`, each priced at the catalog's cache prices. Completion tokens are the last
`output_tokens`. A stream that reports neither is `Usage.unreported`.

Stop reasons: `end_turn`, `stop_sequence` -> STOP; `max_tokens`, `model_context_window_exceeded` ->
LENGTH; `tool_use` -> TOOL_CALLS; `refusal` -> CONTENT_FILTER; `pause_turn` (a server-tool loop paused,
to be continued by another request) and anything new -> UNSPECIFIED.

Counting: `POST {base_url}/v1/messages/count_tokens` with the Messages body's `model`, `messages`, `system`,
`tools`, `tool_choice` and `thinking` (the endpoint takes no max_tokens, sampling or metadata); its
`input_tokens` is the count, exact. Anthropic has no embeddings endpoint: the catalog never gives an
Anthropic model the "embeddings" capability.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

from server.config import ProviderConfig
from server.embedding import TokenCount
from server.errors import UpstreamError
from server.providers.http import EventDecoder, HTTPProvider, checked_usage, loads_object, token_count
from server.providers.images import inline
from server.providers.transport import Transport
from server.providers.upstream_errors import error_for_error_type, safe_identifier
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
    ReasoningDelta,
    Role,
    SamplingParams,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    ToolMode,
    Usage,
)

__all__ = ["ANTHROPIC_VERSION", "MIN_THINKING_BUDGET", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
_PATH = "/v1/messages"
_COUNT_PATH = "/v1/messages/count_tokens"
# The Messages body fields the count endpoint takes (no max_tokens, sampling or metadata).
_COUNTED_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
MIN_THINKING_BUDGET = 1024  # Anthropic's smallest budget_tokens
_STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
_INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicProvider(HTTPProvider):
    request_id_header = "request-id"  # the upstream's id of its answer, for support tickets

    def __init__(self, config: ProviderConfig, *, transport: Transport | None = None) -> None:
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        super().__init__(config, headers, transport=transport)

    def key_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = request_body(request)
        body["stream"] = True
        events = _AnthropicEvents(self.name, output_tool(request.params), _includes(request))
        return self._stream_sse(_PATH, body, request, events)

    async def complete(self, request: ChatRequest) -> Completion:
        output = output_tool(request.params)
        include = _includes(request)
        return await self._post_json(
            _PATH, request_body(request), request, lambda payload: self._completion(payload, output, include)
        )

    async def count_tokens(self, request: ChatRequest) -> TokenCount:
        full = request_body(request)
        body = {key: full[key] for key in _COUNTED_FIELDS if key in full}
        return await self._post_for(_COUNT_PATH, body, request, self._token_count)

    def _token_count(self, payload: dict[str, Any]) -> TokenCount:
        if payload.get("type") == "error":
            raise _in_band_error(self.name, payload.get("error"))
        return TokenCount(token_count(payload["input_tokens"], "input_tokens", self.name), exact=True)

    def _completion(self, payload: dict[str, Any], output: str | None, include_thinking: bool) -> Completion:
        if payload.get("type") == "error":
            raise _in_band_error(self.name, payload.get("error"))
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        answered = False  # by the output tool
        for block in payload["content"]:
            kind = block.get("type")
            if kind == "text":
                texts.append(block["text"])
            elif kind == "thinking" and include_thinking:
                thoughts.append(str(block.get("thinking") or ""))
            elif kind == "tool_use" and block["name"] == output:
                answered = True
                texts.append(_compact(block["input"]))
            elif kind == "tool_use":
                calls.append(ToolCall(str(block["id"]), str(block["name"]), _compact(block["input"])))
        reason = _STOP_REASONS.get(payload.get("stop_reason") or "", FinishReason.UNSPECIFIED)
        if reason is FinishReason.TOOL_CALLS and answered and not calls:
            reason = FinishReason.STOP  # the forced output tool: the reply is whole
        raw = payload.get("usage")
        usage = usage_from(raw, None, self.name) if raw else None
        return Completion("".join(texts), reason, usage, tool_calls=tuple(calls), reasoning="".join(thoughts))


class _AnthropicEvents(EventDecoder):
    __slots__ = ("_blocks", "_calls", "_include_thinking", "_input", "_output")

    def __init__(self, provider: str, output: str | None = None, include_thinking: bool = False) -> None:
        super().__init__(provider)
        self._include_thinking = include_thinking
        self._input: dict[str, Any] | None = None  # message_start's usage
        self._output = output  # the forced output tool's name, when the reply is JSON
        self._blocks: dict[int, int] = {}  # a tool_use block's index -> its call's index (-1: the output tool)
        self._calls = 0

    def finish(self) -> Finish:
        if self.reason is FinishReason.TOOL_CALLS and -1 in self._blocks.values() and not self._calls:
            self.reason = FinishReason.STOP  # the forced output tool: the reply is whole
        return super().finish()

    def _tool_block(self, chunk: dict[str, Any], block: dict[str, Any]) -> None:
        if block["name"] == self._output:
            self._blocks[int(chunk["index"])] = -1
            return
        self._blocks[int(chunk["index"])] = self._calls
        self.pieces.append(ToolCallDelta(self._calls, str(block["id"]), str(block["name"])))
        self._calls += 1

    def _input_json(self, chunk: dict[str, Any], fragment: str) -> str | None:
        call = self._blocks.get(int(chunk["index"]))
        if call is None or not fragment:
            return None
        if call < 0:
            return fragment  # the output tool's input is the reply's text
        self.pieces.append(ToolCallDelta(call, arguments=fragment))
        return None

    def feed(self, event: ServerSentEvent) -> str | None:
        if event.event == "ping":
            return None
        chunk = loads_object(event.data, self.provider)
        kind = chunk.get("type")
        if kind == "content_block_delta":  # the hot path: one per token
            delta = chunk.get("delta") or {}
            kind = delta.get("type")
            if kind == "text_delta":
                return delta.get("text")
            if kind == "input_json_delta":
                return self._input_json(chunk, delta.get("partial_json") or "")
            if kind == "thinking_delta" and self._include_thinking and delta.get("thinking"):
                self.pieces.append(ReasoningDelta(str(delta["thinking"])))
            return None  # a signature_delta (the thinking block's signature), or thinking not asked for
        if kind == "message_start":
            usage = (chunk.get("message") or {}).get("usage")
            if usage:
                self._input = usage
                self.usage = usage_from(usage, None, self.provider)
        elif kind == "message_delta":
            stop_reason = (chunk.get("delta") or {}).get("stop_reason")
            if stop_reason:
                self.reason = _STOP_REASONS.get(stop_reason, FinishReason.UNSPECIFIED)
            if chunk.get("usage"):
                self.usage = usage_from(self._input, chunk["usage"], self.provider)
        elif kind == "message_stop":
            self.ended = True
        elif kind == "error":
            raise _in_band_error(self.provider, chunk.get("error"))
        elif kind == "content_block_start":
            block = chunk.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._tool_block(chunk, block)
            return block.get("text") if block.get("type") == "text" else None
        return None


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The Messages API body for `request` (without `stream`)."""
    system: list[ChatMessage] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            system.append(message)
            continue
        role = "user" if message.role is Role.TOOL else message.role.value
        plain = not (message.tool_calls or message.role is Role.TOOL or message.cache or message.images)
        if messages and messages[-1]["role"] == role:
            last = messages[-1]
            if isinstance(last["content"], str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            last["content"].extend([{"type": "text", "text": message.content}] if plain else _blocks(message))
        else:
            messages.append({"role": role, "content": message.content if plain else _blocks(message)})
    params = request.params
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": params.max_tokens if params.max_tokens is not None else request.max_output_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = _system(system)
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    if params.tools or params.wants_json:
        _tool_options(body, params)
    if request.user:
        body["metadata"] = {"user_id": request.user}  # who is calling (server/policy/identity.py)
    budget = params.reasoning.budget() if params.reasoning is not None else None
    if budget is not None:
        budget = max(budget, MIN_THINKING_BUDGET)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens + budget  # max_tokens counts the thinking too
    return body


def _includes(request: ChatRequest) -> bool:
    """Whether the request asked for the model's thinking text."""
    return request.params.reasoning is not None and request.params.reasoning.include


def _system(messages: list[ChatMessage]) -> str | list[dict[str, Any]]:
    """The system prompt: one string, or text blocks when one of its messages is a cache breakpoint."""
    if not any(m.cache for m in messages):
        return "\n\n".join(m.content for m in messages)
    return [{"type": "text", "text": m.content, **(_CACHE if m.cache else {})} for m in messages]


def output_tool(params: SamplingParams) -> str | None:
    """The name of the forced tool whose input is a JSON reply, or None for a text reply."""
    fmt = params.response_format
    if fmt is None or fmt.kind is OutputFormat.TEXT:
        return None
    return fmt.name if fmt.kind is OutputFormat.JSON_SCHEMA else "json_output"


# A cache breakpoint, on the last content block of the message that asks for one (the 5-minute default TTL).
_CACHE = {"cache_control": {"type": "ephemeral"}}


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]]
    if message.role is Role.TOOL:
        blocks = [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}]
    else:
        blocks = (
            [{"type": "text", "text": message.content}]
            if message.content or not (message.tool_calls or message.images)
            else []
        )
        blocks += [_image_block(image) for image in message.images]
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": object_of(c.arguments)}
            for c in message.tool_calls
        ]
    if message.cache:
        blocks[-1] = {**blocks[-1], **_CACHE}
    return blocks


def _image_block(image: Image) -> dict[str, Any]:
    data = inline(image)
    if data is None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}


_CHOICES = {ToolMode.AUTO: {"type": "auto"}, ToolMode.NONE: {"type": "none"}, ToolMode.REQUIRED: {"type": "any"}}


def _tool_options(body: dict[str, Any], params: SamplingParams) -> None:
    tools = [
        {
            "name": t.name,
            **({"description": t.description} if t.description else {}),
            "input_schema": schema_of(t.parameters),
        }
        for t in params.tools
    ]
    choice = params.tool_choice
    if choice is not None and params.tools:
        body["tool_choice"] = (
            {"type": "tool", "name": choice.name} if choice.mode is ToolMode.NAMED else _CHOICES[choice.mode]
        )
    output = output_tool(params)
    if output is not None:
        fmt = params.response_format
        assert fmt is not None
        schema = schema_of(fmt.schema) if fmt.schema else {"type": "object"}
        description = fmt.description or "Give your whole reply as this tool's input."
        tools.append({"name": output, "description": description, "input_schema": schema})
        mode = (choice.mode if choice is not None else ToolMode.AUTO) if params.tools else ToolMode.NONE
        if mode in (ToolMode.AUTO, ToolMode.REQUIRED):
            body["tool_choice"] = {"type": "any"}  # the client's tools, or the output tool
        elif mode is ToolMode.NONE:
            body["tool_choice"] = {"type": "tool", "name": output}
    body["tools"] = tools


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def usage_from(start: Any, delta: Any, provider: str) -> Usage:
    """Usage from message_start's `usage` and message_delta's (cumulative) `usage`; a later field wins."""
    fields = {**(start or {}), **(delta or {})}
    prompt = sum(token_count(fields.get(name), name, provider) for name in _INPUT_FIELDS)
    completion = token_count(fields.get("output_tokens"), "output_tokens", provider)
    return replace(
        checked_usage(prompt, completion, prompt + completion, provider),
        cached_prompt_tokens=token_count(fields.get("cache_read_input_tokens"), "cache_read_input_tokens", provider),
        cache_write_tokens=token_count(
            fields.get("cache_creation_input_tokens"), "cache_creation_input_tokens", provider
        ),
    )


def _in_band_error(provider: str, error: object) -> UpstreamError:
    return error_for_error_type(provider, safe_identifier(error.get("type")) if isinstance(error, dict) else None)
