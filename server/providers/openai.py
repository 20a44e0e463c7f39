"""Any OpenAI-compatible Chat Completions API (`POST {base_url}/chat/completions`).

Streaming follows OpenAI's wire format: `data: {chat.completion.chunk}` events, a chunk whose choice has a
`finish_reason`, a usage chunk with `"choices": []` (asked for with `stream_options.include_usage`), then
`data: [DONE]`. An `{"error": …}` event inside the 200 stream is an in-band error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from server.config import ProviderConfig
from server.errors import UpstreamBadResponse, UpstreamError, UpstreamUnavailable
from server.providers.base import Provider
from server.providers.http import (
    error_for_error_type,
    error_for_status,
    error_for_transport,
    make_client,
    request_timeout,
    safe_identifier,
)
from server.sse import aiter_sse
from server.types import (
    ChatRequest,
    Completion,
    Finish,
    FinishReason,
    StreamEvent,
    TextDelta,
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
# Error bodies are read only to learn the error type; anything longer is not an error body we know.
_MAX_ERROR_BODY_BYTES = 64 * 1024


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig, *, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(config.name)
        self._config = config
        headers = {"content-type": "application/json", "accept": "application/json"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self._client = client or make_client(config, headers)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = self._body(request)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        response = await self._send(request, body)
        reason: FinishReason | None = None
        usage: Usage | None = None
        finished = False
        try:
            if response.status_code != 200:
                raise await self._error_from_response(response)
            async for event in aiter_sse(response.aiter_raw()):
                data = event.data
                if finished:
                    continue  # read on to the end of the body, so the connection goes back to the pool
                if data == "[DONE]":
                    finished = True
                    yield Finish(reason or FinishReason.UNSPECIFIED, usage)
                    continue
                chunk = _loads(data, self.name)
                if "error" in chunk:
                    raise _in_band_error(self.name, chunk["error"])
                # Deltas are the hot path: one dict walk per token, no intermediate objects.
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield TextDelta(content)
                    if choice.get("finish_reason"):
                        reason = _FINISH_REASONS.get(choice["finish_reason"], FinishReason.UNSPECIFIED)
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"], self.name)
            if not finished:
                # The body ended without [DONE]. After a finish_reason the reply is whole (some
                # compatible servers omit [DONE]); before one, the stream was cut.
                if reason is None:
                    raise UpstreamUnavailable(
                        f"upstream {self.name} ended the stream before it finished",
                        provider=self.name,
                        reason="UPSTREAM_STREAM_INTERRUPTED",
                    )
                finished = True
                yield Finish(reason, usage)
        except httpx.TransportError as exc:
            if not finished:  # after [DONE] the reply is whole; a failing drain only costs the connection
                raise error_for_transport(self.name, exc, streaming=True) from exc
        finally:
            await response.aclose()

    async def complete(self, request: ChatRequest) -> Completion:
        response = await self._send(request, self._body(request))
        try:
            if response.status_code != 200:
                raise await self._error_from_response(response)
            payload = _loads((await response.aread()).decode("utf-8", "replace"), self.name)
        except httpx.TransportError as exc:
            raise error_for_transport(self.name, exc, streaming=False) from exc
        finally:
            await response.aclose()
        if "error" in payload:
            raise _in_band_error(self.name, payload["error"])
        try:
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
            reason = _FINISH_REASONS.get(choice.get("finish_reason") or "", FinishReason.UNSPECIFIED)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamBadResponse(f"upstream {self.name} answered without a message", provider=self.name) from exc
        usage = _usage(payload["usage"], self.name) if payload.get("usage") else None
        return Completion(text, reason, usage)

    def _body(self, request: ChatRequest) -> dict[str, Any]:
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

    async def _send(self, request: ChatRequest, body: dict[str, Any]) -> httpx.Response:
        http_request = self._client.build_request(
            "POST",
            "/chat/completions",
            content=json.dumps(body, separators=(",", ":")).encode(),
            timeout=request_timeout(self._config, request.timeout_s),
        )
        try:
            return await self._client.send(http_request, stream=True)
        except httpx.TransportError as exc:
            # Nothing of the answer has been read yet: even a reset here is not a stream cut mid-way.
            raise error_for_transport(self.name, exc, streaming=False) from exc

    async def _error_from_response(self, response: httpx.Response) -> UpstreamError:
        error_type = None
        try:
            body = b""
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > _MAX_ERROR_BODY_BYTES:
                    break
            error = json.loads(body).get("error")
            if isinstance(error, dict):
                error_type = safe_identifier(error.get("code")) or safe_identifier(error.get("type"))
        except (ValueError, AttributeError, httpx.HTTPError):
            pass  # the status code alone decides; the body is only a hint
        return error_for_status(self.name, response.status_code, response.headers, error_type)


def _loads(data: str, provider: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise UpstreamBadResponse(f"upstream {provider} sent malformed JSON", provider=provider) from exc
    if not isinstance(value, dict):
        raise UpstreamBadResponse(f"upstream {provider} sent a JSON {type(value).__name__}", provider=provider)
    return value


def _in_band_error(provider: str, error: object) -> UpstreamError:
    error_type = None
    if isinstance(error, dict):
        error_type = safe_identifier(error.get("type")) or safe_identifier(error.get("code"))
    return error_for_error_type(provider, error_type)


def _usage(raw: object, provider: str) -> Usage:
    try:
        prompt = int(raw.get("prompt_tokens") or 0)  # type: ignore[attr-defined]
        completion = int(raw.get("completion_tokens") or 0)  # type: ignore[attr-defined]
        total = int(raw.get("total_tokens") or prompt + completion)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError) as exc:
        raise UpstreamBadResponse(f"upstream {provider} sent malformed usage", provider=provider) from exc
    return Usage(prompt, completion, total)
