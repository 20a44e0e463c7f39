"""Any OpenAI-compatible Chat Completions API (`POST {base_url}/chat/completions`).

Streaming follows OpenAI's wire format: `data: {chat.completion.chunk}` events, a chunk whose choice has a
`finish_reason`, a usage chunk with `"choices": []` (asked for with `stream_options.include_usage`), then
`data: [DONE]`. An `{"error": …}` event inside the 200 stream is an in-band error. A body that ends
without [DONE] is whole after a finish_reason (some compatible servers omit [DONE]), cut before one.
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
from server.types import ChatRequest, Completion, FinishReason, StreamEvent, Usage

__all__ = ["OpenAIProvider"]

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}
_PATH = "/chat/completions"


class OpenAIProvider(HTTPProvider):
    request_id_header = "x-request-id"  # the upstream's id of its answer, for support tickets

    def __init__(self, config: ProviderConfig, *, transport: Transport | None = None) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        super().__init__(config, headers, transport=transport)

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = _body(request)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return self._stream_sse(_PATH, body, request, _OpenAIEvents(self.name))

    async def complete(self, request: ChatRequest) -> Completion:
        return await self._post_json(_PATH, _body(request), request, self._completion)

    def _completion(self, payload: dict[str, Any]) -> Completion:
        if "error" in payload:
            raise _in_band_error(self.name, payload["error"])
        choice = payload["choices"][0]
        text = choice["message"].get("content") or ""
        reason = _FINISH_REASONS.get(choice.get("finish_reason") or "", FinishReason.UNSPECIFIED)
        usage = _usage(payload["usage"], self.name) if payload.get("usage") else None
        return Completion(text, reason, usage)


class _OpenAIEvents(EventDecoder):
    __slots__ = ()

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
            content = (choice.get("delta") or {}).get("content")
            if content:
                text = content if text is None else text + content
            if choice.get("finish_reason"):
                self.reason = _FINISH_REASONS.get(choice["finish_reason"], FinishReason.UNSPECIFIED)
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"], self.provider)
        return text


def _body(request: ChatRequest) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    for message in request.messages:
        entry = {"role": message.role.value, "content": message.content}
        if message.name:
            entry["name"] = message.name
        messages.append(entry)
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    params = request.params
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def _in_band_error(provider: str, error: object) -> UpstreamError:
    error_type = None
    if isinstance(error, dict):
        error_type = safe_identifier(error.get("type")) or safe_identifier(error.get("code"))
    return error_for_error_type(provider, error_type)


def _usage(raw: Any, provider: str) -> Usage:
    prompt = token_count(raw.get("prompt_tokens"), "prompt_tokens", provider)
    completion = token_count(raw.get("completion_tokens"), "completion_tokens", provider)
    total = token_count(raw.get("total_tokens"), "total_tokens", provider) or prompt + completion
    return checked_usage(prompt, completion, total, provider)
