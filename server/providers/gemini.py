"""Google's Gemini API (Generative Language API v1beta), natively; base_url without `/v1beta`.

`POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse` streams, `…:generateContent` answers
whole. The key travels only in the `x-goog-api-key` header, never in the URL, where it would leak into
logs, proxies and exception text.

Request mapping: user messages are `contents` of role `user`, assistant messages of role `model`, each
`parts: [{"text": …}]`; consecutive messages of one role become one content with a part each; system
messages are lifted into `systemInstruction`, a part each; `generationConfig` holds only what the client
set (`temperature`, `topP`, `maxOutputTokens`, `stopSequences`). Message `name`s are dropped.

Streaming: every SSE `data:` event is a whole GenerateContentResponse. The text is in
`candidates[0].content.parts[].text` (parts marked `"thought": true` are thought summaries, not reply
text, and are skipped); `candidates[0].finishReason` says why it stopped; `usageMetadata` may come with
every event and the last one counts. There is no end event: the stream is whole when the body ends after
a finishReason, cut otherwise. A prompt blocked by `promptFeedback.blockReason` has no candidates and
ends with CONTENT_FILTER and no text. An event with an `error` object is an in-band error, mapped by its
canonical `status` (RESOURCE_EXHAUSTED, UNAVAILABLE, …).

Usage: prompt tokens are `promptTokenCount` (which includes cached content) plus
`toolUsePromptTokenCount`; completion tokens are `candidatesTokenCount` plus `thoughtsTokenCount` (the
model's thinking is generated and billed as output). No usageMetadata at all is `Usage.unreported`.

Finish reasons: STOP -> STOP; MAX_TOKENS -> LENGTH; SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT,
SPII, IMAGE_SAFETY -> CONTENT_FILTER; anything else (LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, …) ->
UNSPECIFIED.

Errors: Google's body is `{"error": {"code", "message", "status", "details"}}`. A bad key is answered
with HTTP 400 and ErrorInfo reason API_KEY_INVALID, which is reported as UPSTREAM_AUTH_FAILED like a
401; a `google.rpc.RetryInfo` detail's `retryDelay` becomes the RetryInfo of a rate-limit error when no
Retry-After header says when.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from server.config import ProviderConfig
from server.errors import UpstreamError
from server.observe.request_id import upstream_request_id
from server.providers.http import ErrorHint, EventDecoder, HTTPProvider, checked_usage, loads_object, token_count
from server.providers.transport import Transport
from server.providers.upstream_errors import error_for_error_type, safe_identifier
from server.sse import ServerSentEvent
from server.types import ChatRequest, Completion, Finish, FinishReason, Role, StreamEvent, Usage

__all__ = ["GeminiProvider"]

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
_ROLES = {Role.USER: "user", Role.ASSISTANT: "model"}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# google.protobuf.Duration in JSON: seconds with up to nine fractional digits and an "s".
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)s")


class GeminiProvider(HTTPProvider):
    def __init__(self, config: ProviderConfig, *, transport: Transport | None = None) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if config.api_key:
            headers["x-goog-api-key"] = config.api_key
        super().__init__(config, headers, transport=transport)

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        path = f"{_model_path(request.model)}:streamGenerateContent?alt=sse"
        return self._stream_sse(path, request_body(request), request, _GeminiEvents(self.name))

    async def complete(self, request: ChatRequest) -> Completion:
        path = f"{_model_path(request.model)}:generateContent"
        return await self._post_json(path, request_body(request), request, self._completion)

    def _completion(self, payload: dict[str, Any]) -> Completion:
        events = _GeminiEvents(self.name)  # a whole answer has the shape of one stream event
        text = events.read(payload) or ""
        finish = events.finish()
        return Completion(text, finish.reason, finish.usage, upstream_request_id=finish.upstream_request_id)

    def _error_hint(self, error: Mapping[str, Any]) -> ErrorHint:
        # ErrorInfo's reason (API_KEY_INVALID) says more than the canonical status (INVALID_ARGUMENT).
        reason, retry_after_s = _details(error)
        return reason or safe_identifier(error.get("status")), retry_after_s


class _GeminiEvents(EventDecoder):
    __slots__ = ("_response_id", "_usage_metadata")

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        self._usage_metadata: Any = None  # the latest usageMetadata; Gemini repeats it on every event
        # Gemini sends no request id header; its answer's `responseId` (read with the finish reason) is
        # the id to quote to Google.
        self._response_id: Any = None

    def finish(self) -> Finish:
        self.usage = usage_from(self._usage_metadata, self.provider) if self._usage_metadata else None
        finish = super().finish()
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
            if piece and not part.get("thought"):
                text = piece if text is None else text + piece
        return text


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The generateContent body for `request` (the model is in the URL)."""
    system: list[dict[str, str]] = []
    contents: list[dict[str, Any]] = []
    for message in request.messages:
        part = {"text": message.content}
        if message.role is Role.SYSTEM:
            system.append(part)
            continue
        role = _ROLES[message.role]
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].append(part)
        else:
            contents.append({"role": role, "parts": [part]})
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
    if config:
        body["generationConfig"] = config
    return body


def usage_from(raw: Any, provider: str) -> Usage:
    def count(name: str) -> int:
        return token_count(raw.get(name), name, provider)

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    completion = count("candidatesTokenCount") + count("thoughtsTokenCount")
    return checked_usage(prompt, completion, prompt + completion, provider)


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
