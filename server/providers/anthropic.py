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
Anthropic caches the prompt up to there; a 1-hour TTL adds `"ttl": "1h"` (a 5-minute one is the default and
is left out).

Reasoning: `thinking: {"type": "enabled", "budget_tokens": …}` (the client's budget, else its effort's:
low 1024, medium 8192, high 24576; at least Anthropic's minimum of 1024). Anthropic's `max_tokens` counts
the thinking as well, so a client's max_tokens is sent plus the budget. Streamed `thinking_delta`s become
ReasoningDeltas when the client asked for the reasoning text, and are dropped otherwise. Every `thinking`
block (its text from the `thinking_delta`s and its `signature_delta`, whole at `content_block_stop`) and
`redacted_thinking` block (its `data`) becomes a signed ReasoningBlock of the Finish (or Completion), asked
for or not: the next request must carry it back. An assistant message's own blocks (those this provider
made; other providers' are dropped) go first in its content, `{"type":"thinking","thinking","signature"}`
and `{"type":"redacted_thinking","data"}`, as they came. A whole answer's `thinking` blocks are its
`reasoning`. Anthropic reports no separate count of thinking tokens: they are in
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
`cache_write_tokens`, each priced at the catalog's cache prices; of the writes, `cache_creation.
ephemeral_1h_input_tokens` are `cache_write_1h_tokens` (priced at the 1-hour write price). Without that
split, the writes of a request with a 1-hour breakpoint all count as 1-hour ones (an upper bound).
Completion tokens are the last
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
from server.providers.signed import MAX_THINKING_BYTES, own_blocks, signed_block, thinking_too_long
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
        body = request_body(request, provider=self.name)
        body["stream"] = True
        events = _AnthropicEvents(self.name, output_tool(request.params), _includes(request), _hour_writes(request))
        return self._stream_sse(_PATH, body, request, events)

    async def complete(self, request: ChatRequest) -> Completion:
        output = output_tool(request.params)
        include, hour = _includes(request), _hour_writes(request)
        return await self._post_json(
            _PATH,
            request_body(request, provider=self.name),
            request,
            lambda payload: self._completion(payload, output, include, hour),
        )

    async def count_tokens(self, request: ChatRequest) -> TokenCount:
        full = request_body(request, provider=self.name)
        body = {key: full[key] for key in _COUNTED_FIELDS if key in full}
        return await self._post_for(_COUNT_PATH, body, request, self._token_count)

    def _token_count(self, payload: dict[str, Any]) -> TokenCount:
        if payload.get("type") == "error":
            raise _in_band_error(self.name, payload.get("error"))
        return TokenCount(token_count(payload["input_tokens"], "input_tokens", self.name), exact=True)

    def _completion(
        self, payload: dict[str, Any], output: str | None, include_thinking: bool, hour_writes: bool
    ) -> Completion:
        if payload.get("type") == "error":
            raise _in_band_error(self.name, payload.get("error"))
        texts: list[str] = []
        thoughts: list[str] = []
        signed: list[ReasoningBlock] = []
        calls: list[ToolCall] = []
        answered = False  # by the output tool
        for block in payload["content"]:
            kind = block.get("type")
            if kind == "text":
                texts.append(block["text"])
            elif kind == "thinking":
                thinking = str(block.get("thinking") or "")
                signed.append(signed_block(self.name, text=thinking, signature=block.get("signature") or ""))
                if include_thinking:
                    thoughts.append(thinking)
            elif kind == "redacted_thinking":
                signed.append(signed_block(self.name, redacted=block.get("data") or ""))
            elif kind == "tool_use" and block["name"] == output:
                answered = True
                texts.append(_compact(block["input"]))
            elif kind == "tool_use":
                calls.append(ToolCall(str(block["id"]), str(block["name"]), _compact(block["input"])))
        reason = _STOP_REASONS.get(payload.get("stop_reason") or "", FinishReason.UNSPECIFIED)
        if reason is FinishReason.TOOL_CALLS and answered and not calls:
            reason = FinishReason.STOP  # the forced output tool: the reply is whole
        raw = payload.get("usage")
        usage = usage_from(raw, None, self.name, hour_writes) if raw else None
        return Completion(
            "".join(texts),
            reason,
            usage,
            tool_calls=tuple(calls),
            reasoning="".join(thoughts),
            reasoning_blocks=tuple(signed),
        )


class _Thinking:
    """A thinking block being streamed: its text pieces and its signature, whole at its block stop."""

    __slots__ = ("pieces", "signature", "size")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.signature = ""
        self.size = 0


class _AnthropicEvents(EventDecoder):
    __slots__ = ("_blocks", "_calls", "_hour_writes", "_include_thinking", "_input", "_output", "_signed", "_thinking")

    def __init__(
        self, provider: str, output: str | None = None, include_thinking: bool = False, hour_writes: bool = False
    ) -> None:
        super().__init__(provider)
        self._include_thinking = include_thinking
        self._hour_writes = hour_writes  # the request has a 1-hour breakpoint
        self._input: dict[str, Any] | None = None  # message_start's usage
        self._output = output  # the forced output tool's name, when the reply is JSON
        self._blocks: dict[int, int] = {}  # a tool_use block's index -> its call's index (-1: the output tool)
        self._calls = 0
        self._thinking: dict[int, _Thinking] = {}  # thinking blocks streaming, by block index
        self._signed: list[ReasoningBlock] = []  # the reply's signed blocks, in order

    def finish(self) -> Finish:
        if self.reason is FinishReason.TOOL_CALLS and -1 in self._blocks.values() and not self._calls:
            self.reason = FinishReason.STOP  # the forced output tool: the reply is whole
        finish = super().finish()
        return replace(finish, reasoning_blocks=tuple(self._signed)) if self._signed else finish

    def _thinking_delta(self, chunk: dict[str, Any], delta: dict[str, Any]) -> None:
        block = self._thinking.get(int(chunk["index"]))
        if delta["type"] == "signature_delta":
            if block is not None:
                block.signature += str(delta.get("signature") or "")
            return
        text = delta.get("thinking")
        if not text:
            return
        if block is not None:
            block.size += len(text)
            if block.size > MAX_THINKING_BYTES:
                raise thinking_too_long(self.provider)
            block.pieces.append(str(text))
        if self._include_thinking:
            self.pieces.append(ReasoningDelta(str(text)))

    def _block_start(self, chunk: dict[str, Any], block: dict[str, Any]) -> None:
        kind = block.get("type")
        if kind == "tool_use":
            self._tool_block(chunk, block)
        elif kind == "thinking":
            self._thinking[int(chunk["index"])] = _Thinking()
        elif kind == "redacted_thinking":
            self._signed.append(signed_block(self.provider, redacted=block.get("data") or ""))

    def _block_stop(self, chunk: dict[str, Any]) -> None:
        block = self._thinking.pop(int(chunk["index"]), None)
        if block is not None:
            text = "".join(block.pieces)
            self._signed.append(signed_block(self.provider, text=text, signature=block.signature))

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
            if kind in ("thinking_delta", "signature_delta"):
                self._thinking_delta(chunk, delta)
            return None
        if kind == "message_start":
            usage = (chunk.get("message") or {}).get("usage")
            if usage:
                self._input = usage
                self.usage = usage_from(usage, None, self.provider, self._hour_writes)
        elif kind == "message_delta":
            stop_reason = (chunk.get("delta") or {}).get("stop_reason")
            if stop_reason:
                self.reason = _STOP_REASONS.get(stop_reason, FinishReason.UNSPECIFIED)
            if chunk.get("usage"):
                self.usage = usage_from(self._input, chunk["usage"], self.provider, self._hour_writes)
        elif kind == "message_stop":
            self.ended = True
        elif kind == "error":
            raise _in_band_error(self.provider, chunk.get("error"))
        elif kind == "content_block_start":
            block = chunk.get("content_block") or {}
            if block.get("type") == "text":
                return block.get("text")
            self._block_start(chunk, block)
        elif kind == "content_block_stop" and self._thinking:
            self._block_stop(chunk)
        return None


def request_body(request: ChatRequest, *, provider: str = "") -> dict[str, Any]:
    """The Messages API body for `request` (without `stream`), sent to the provider named `provider` (the
    signed reasoning blocks it made go back to it; others are dropped)."""
    system: list[ChatMessage] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            system.append(message)
            continue
        role = "user" if message.role is Role.TOOL else message.role.value
        signed = own_blocks(message, provider)
        plain = not (message.tool_calls or message.role is Role.TOOL or message.cache or message.images or signed)
        if messages and messages[-1]["role"] == role:
            last = messages[-1]
            if isinstance(last["content"], str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            last["content"].extend([{"type": "text", "text": message.content}] if plain else _blocks(message, signed))
        else:
            messages.append({"role": role, "content": message.content if plain else _blocks(message, signed)})
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


def _hour_writes(request: ChatRequest) -> bool:
    """Whether the request has a 1-hour cache breakpoint."""
    return any(m.cache_ttl_s == _HOUR_S for m in request.messages if m.cache)


def _system(messages: list[ChatMessage]) -> str | list[dict[str, Any]]:
    """The system prompt: one string, or text blocks when one of its messages is a cache breakpoint."""
    if not any(m.cache for m in messages):
        return "\n\n".join(m.content for m in messages)
    return [{"type": "text", "text": m.content, **(_cache(m) if m.cache else {})} for m in messages]


def output_tool(params: SamplingParams) -> str | None:
    """The name of the forced tool whose input is a JSON reply, or None for a text reply."""
    fmt = params.response_format
    if fmt is None or fmt.kind is OutputFormat.TEXT:
        return None
    return fmt.name if fmt.kind is OutputFormat.JSON_SCHEMA else "json_output"


# A cache breakpoint, on the last content block of the message that asks for one: the 5-minute default TTL,
# or one hour.
_CACHE = {"cache_control": {"type": "ephemeral"}}
_CACHE_HOUR = {"cache_control": {"type": "ephemeral", "ttl": "1h"}}
_HOUR_S = 3600


def _cache(message: ChatMessage) -> dict[str, Any]:
    return _CACHE_HOUR if message.cache_ttl_s == _HOUR_S else _CACHE


def _signed(block: ReasoningBlock) -> dict[str, Any]:
    if block.redacted:
        return {"type": "redacted_thinking", "data": block.redacted}
    return {"type": "thinking", "thinking": block.text, "signature": block.signature}


def _blocks(message: ChatMessage, signed: tuple[ReasoningBlock, ...] = ()) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]]
    if message.role is Role.TOOL:
        blocks = [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}]
    else:
        blocks = [_signed(block) for block in signed]  # thinking first, as the model wrote it
        blocks += (
            [{"type": "text", "text": message.content}]
            if message.content or not (message.tool_calls or message.images or signed)
            else []
        )
        blocks += [_image_block(image) for image in message.images]
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": object_of(c.arguments)}
            for c in message.tool_calls
        ]
    if message.cache:
        blocks[-1] = {**blocks[-1], **_cache(message)}
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


def usage_from(start: Any, delta: Any, provider: str, hour_writes: bool = False) -> Usage:
    """Usage from message_start's `usage` and message_delta's (cumulative) `usage`; a later field wins.
    `hour_writes`: the request has a 1-hour breakpoint, so writes without a TTL split are 1-hour ones."""
    fields = {**(start or {}), **(delta or {})}
    prompt = sum(token_count(fields.get(name), name, provider) for name in _INPUT_FIELDS)
    completion = token_count(fields.get("output_tokens"), "output_tokens", provider)
    written = token_count(fields.get("cache_creation_input_tokens"), "cache_creation_input_tokens", provider)
    split = fields.get("cache_creation")
    if isinstance(split, dict):
        name = "ephemeral_1h_input_tokens"
        hour = min(token_count(split.get(name), f"cache_creation.{name}", provider), written)
    else:
        hour = written if hour_writes else 0
    return replace(
        checked_usage(prompt, completion, prompt + completion, provider),
        cached_prompt_tokens=token_count(fields.get("cache_read_input_tokens"), "cache_read_input_tokens", provider),
        cache_write_tokens=written,
        cache_write_1h_tokens=hour,
    )


def _in_band_error(provider: str, error: object) -> UpstreamError:
    return error_for_error_type(provider, safe_identifier(error.get("type")) if isinstance(error, dict) else None)
