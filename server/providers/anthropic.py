"""Anthropic's Messages API, natively (`POST {base_url}/v1/messages`, base_url without `/v1`).

Request mapping:
- the key goes in `x-api-key`, with `anthropic-version: 2023-06-01`;
- system messages are lifted into the top-level `system`, joined with a blank line when there are
  several (wherever they stood in the conversation);
- the Messages API wants user and assistant turns to alternate, so consecutive messages of one role
  (also those that a lifted system message separated) are merged into one message whose content is a
  list of text blocks, one per original message; a single message keeps a plain string `content`;
- `max_tokens` is always sent (Anthropic requires it): the client's, else the model's output limit;
- `temperature`, `top_p` and `stop` (as `stop_sequences`) are sent only when set. Message `name`s have
  no place in the Messages API and are dropped. Values Anthropic refuses (a temperature above 1, say)
  are left for it to refuse: the client then sees INVALID_ARGUMENT from the upstream.

Streaming (`event:` + `data:` lines): `message_start` carries the input usage, `content_block_delta`
events with a `text_delta` carry the text (other deltas, such as `input_json_delta` for tool calls and
`thinking_delta`/`signature_delta` for extended thinking, are not text of the reply and are skipped),
`message_delta` the stop reason and the cumulative output usage, `message_stop` ends the stream; `ping`
and the block start/stop events carry nothing we need. An `error` event is an in-band error, mapped by
its `error.type`. A body that ends without `message_stop` is whole only if a stop reason arrived.

Usage: prompt tokens are `input_tokens` plus `cache_creation_input_tokens` and `cache_read_input_tokens`
(Anthropic counts cached prompt tokens apart; OpenAI's `prompt_tokens` include them, so this keeps one
meaning, and makes the cost an upper bound when the cache was read). Completion tokens are the last
`output_tokens`. A stream that reports neither is `Usage.unreported`.

Stop reasons: `end_turn`, `stop_sequence` -> STOP; `max_tokens`, `model_context_window_exceeded` ->
LENGTH; `tool_use` -> TOOL_CALLS; `refusal` -> CONTENT_FILTER; `pause_turn` (a server-tool loop paused,
to be continued by another request) and anything new -> UNSPECIFIED.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from server.config import ProviderConfig
from server.errors import UpstreamError
from server.providers.http import EventDecoder, HTTPProvider, checked_usage, loads_object, token_count
from server.providers.transport import Transport
from server.providers.upstream_errors import error_for_error_type, safe_identifier
from server.sse import ServerSentEvent
from server.types import ChatRequest, Completion, FinishReason, Role, StreamEvent, Usage

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
_PATH = "/v1/messages"
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
        if config.api_key:
            headers["x-api-key"] = config.api_key
        super().__init__(config, headers, transport=transport)

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = request_body(request)
        body["stream"] = True
        return self._stream_sse(_PATH, body, request, _AnthropicEvents(self.name))

    async def complete(self, request: ChatRequest) -> Completion:
        return await self._post_json(_PATH, request_body(request), request, self._completion)

    def _completion(self, payload: dict[str, Any]) -> Completion:
        if payload.get("type") == "error":
            raise _in_band_error(self.name, payload.get("error"))
        text = "".join(block["text"] for block in payload["content"] if block.get("type") == "text")
        reason = _STOP_REASONS.get(payload.get("stop_reason") or "", FinishReason.UNSPECIFIED)
        raw = payload.get("usage")
        return Completion(text, reason, usage_from(raw, None, self.name) if raw else None)


class _AnthropicEvents(EventDecoder):
    __slots__ = ("_input",)

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        self._input: dict[str, Any] | None = None  # message_start's usage

    def feed(self, event: ServerSentEvent) -> str | None:
        if event.event == "ping":
            return None
        chunk = loads_object(event.data, self.provider)
        kind = chunk.get("type")
        if kind == "content_block_delta":  # the hot path: one per token
            delta = chunk.get("delta") or {}
            return delta.get("text") if delta.get("type") == "text_delta" else None
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
            return block.get("text") if block.get("type") == "text" else None
        return None


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The Messages API body for `request` (without `stream`)."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            system.append(message.content)
        elif messages and messages[-1]["role"] == message.role.value:
            last = messages[-1]
            if isinstance(last["content"], str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            last["content"].append({"type": "text", "text": message.content})
        else:
            messages.append({"role": message.role.value, "content": message.content})
    params = request.params
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": params.max_tokens if params.max_tokens is not None else request.max_output_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    return body


def usage_from(start: Any, delta: Any, provider: str) -> Usage:
    """Usage from message_start's `usage` and message_delta's (cumulative) `usage`; a later field wins."""
    fields = {**(start or {}), **(delta or {})}
    prompt = sum(token_count(fields.get(name), name, provider) for name in _INPUT_FIELDS)
    completion = token_count(fields.get("output_tokens"), "output_tokens", provider)
    return checked_usage(prompt, completion, prompt + completion, provider)


def _in_band_error(provider: str, error: object) -> UpstreamError:
    return error_for_error_type(provider, safe_identifier(error.get("type")) if isinstance(error, dict) else None)
