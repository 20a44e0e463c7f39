"""What every HTTP provider shares: the transport, timeouts, the request/response flow, and HTTP
failures as UpstreamErrors.

`HTTPProvider` is the base of the wire-format adapters (openai.py, anthropic.py, gemini.py): it posts a
JSON body, turns a non-2xx answer into an UpstreamError, relays an SSE stream through the adapter's
`EventDecoder` (which knows the wire format of one event), drains the body after the end event so the
connection goes back to the pool, and closes the response in `finally`.

The transport (transport.py) raises its failures as UpstreamErrors already; how an upstream's answers
become the gateway's errors is in upstream_errors.py.

What a hostile upstream can send is bounded here, each breach an UpstreamBadResponse (UNAVAILABLE,
UPSTREAM_BAD_RESPONSE) whose metadata names the bound (`limit` and `limit_bytes`, or the field):

    breach                                              metadata
    a 200 answer with a Content-Encoding (not asked)    limit: content_encoding, content_encoding, accepted_encoding
    a whole answer over `max_response_bytes`            limit: max_response_bytes, limit_bytes
    an event-stream line over 4 MiB                     limit: max_sse_line_bytes, limit_bytes
    an event's data lines over 4 MiB together           limit: max_sse_event_bytes, limit_bytes
    JSON nested deeper than Python's parser can follow  limit: json_depth
    a token count not an integer in [0, 2^31 - 1]      limit: token_count, field

An error answer (not 2xx) keeps its status's meaning whatever its body: only its first 64 KiB, as they came
on the wire, are read for an error type, and not at all when compressed or nested too deep.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import replace
from typing import Any, Final, TypeVar, assert_never

from server import defaults
from server.config import ApiKey, ProviderConfig
from server.embedding import EmbedRequest, EmbedResult, TokenCount
from server.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from server.observe.request_id import upstream_request_id
from server.providers.base import Provider
from server.providers.httpx_transport import HttpxTransport
from server.providers.keys import KeyPool
from server.providers.signing import RequestSigner
from server.providers.transport import AiohttpTransport, Timeouts, Transport, UpstreamResponse
from server.providers.upstream_errors import error_for_status, safe_identifier
from server.sse import ServerSentEvent, SSEDecoder, SSEEventTooLarge, SSETooLarge
from server.types import (
    ChatRequest,
    Completion,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ErrorHint",
    "EventDecoder",
    "HTTPProvider",
    "checked_usage",
    "loads_object",
    "make_transport",
    "request_timeouts",
    "stream_interrupted",
    "token_count",
    "unexpected_shape",
]

# The answers that may be about the key rather than the request: Google answers a bad key with 400.
_KEY_STATUSES = frozenset((400, 401, 403, 429))
# The largest token count the contract carries (its usage fields are int32).
MAX_TOKEN_COUNT: Final = 2**31 - 1
_IDENTITY = ("", "identity")
# (error type or code, retry delay in seconds) that an upstream's error object may safely tell.
ErrorHint = tuple[str | None, float | None]
# What reading JSON of an unexpected shape raises (a list where an object was expected, int("many"), …).
_SHAPE_ERRORS = (AttributeError, IndexError, KeyError, TypeError, ValueError)
# What goes upstream: both carry the call's timeout and headers.
Outgoing = ChatRequest | EmbedRequest
# What a whole JSON answer becomes.
_Answer = TypeVar("_Answer", Completion, EmbedResult, TokenCount)


class EventDecoder:
    """One stream's wire format: turns each SSE event into text, and remembers how the reply ends.

    `feed` returns the event's text (or None) and raises an UpstreamError for an in-band error or a
    malformed event. It sets `ended` on the wire format's end event (OpenAI's [DONE], Anthropic's
    message_stop), after which the rest of the body is only drained; `reason` and `usage` as they arrive.
    A body that ends without `ended` is whole only when a finish reason was seen (Gemini has no end event).
    Tool-call pieces and reasoning pieces an event holds go to `pieces`, which the relay empties after each
    event (after the event's text): a text-only stream never touches the list.
    """

    __slots__ = ("ended", "pieces", "provider", "reason", "usage")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.ended = False
        self.reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.pieces: list[ToolCallDelta | ReasoningDelta] = []

    def feed(self, event: ServerSentEvent) -> str | None:
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        return self.ended or self.reason is not None

    def finish(self) -> Finish:
        return Finish(self.reason or FinishReason.UNSPECIFIED, self.usage)


class HTTPProvider(Provider):
    """A provider behind one transport. Subclasses build bodies and decode their wire format.

    `request_id_header` names the response header in which the upstream gives its own id of the answer
    (None: it gives none). That id goes on the Finish or Completion, and on any UpstreamError raised
    once the answer's headers are in, as metadata `upstream_request_id`.

    `headers` go on every request; the key goes in the header `key_headers` names, fixed for a single key,
    chosen per request from a `KeyPool` for several. A provider with a signing secret signs every request.
    """

    request_id_header: str | None = None

    def __init__(
        self, config: ProviderConfig, headers: Mapping[str, str], *, transport: Transport | None = None
    ) -> None:
        super().__init__(config.name)
        self._config = config
        self._keys: KeyPool | None = None
        if config.extra_api_keys:
            self._keys = KeyPool(config.name, (ApiKey(config.api_key_env, config.api_key), *config.extra_api_keys))
        elif config.api_key:
            headers = {**headers, **self.key_headers(config.api_key)}
        self._signer = RequestSigner(config.signing_secret, config.base_url) if config.signing_secret else None
        self._transport = transport or make_transport(config, headers)

    def key_headers(self, key: str) -> dict[str, str]:
        """The header that carries `key` in this wire format."""
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._transport.aclose()

    def _error_hint(self, error: Mapping[str, Any]) -> ErrorHint:
        """What the `error` object of a non-2xx answer says: by default its `code` ("invalid_api_key",
        more specific than OpenAI's `type`), else its `type` (Anthropic's only field)."""
        return safe_identifier(error.get("code")) or safe_identifier(error.get("type")), None

    async def _stream_sse(
        self, path: str, body: dict[str, Any], request: ChatRequest, events: EventDecoder
    ) -> AsyncGenerator[StreamEvent, None]:
        """POST `body` and relay its event stream: TextDelta per event with text, then one Finish."""
        response = await self._post(path, body, request)
        upstream_id = self._upstream_id(response)
        ended = False
        try:
            if response.status != 200:
                raise await self._error_from_response(response)
            self._check_encoding(response)
            decoder = SSEDecoder()
            # The per-token path: the transport's bytes straight into the SSE decoder. The texts of the events
            # one read brings are sent as one TextDelta (their text joined, `pieces` of them), not one each:
            # a read holds several events only when they were already waiting (the upstream wrote them
            # together, or the gateway fell behind while it sent the last delta), so nothing is delayed,
            # and a client that keeps up still gets one delta per event. A tool-call or reasoning piece, an
            # error or the end sends the text before it, so the order of what the client gets never changes.
            async for chunk in response:
                if ended:
                    continue  # read on to the end of the body, so the connection goes back to the pool
                texts: list[str] = []  # the texts of this read's events, not sent yet
                try:
                    for event in decoder.feed(chunk):
                        try:
                            delta = events.feed(event)
                            if delta and type(delta) is not str:  # a number or a list where the text belongs
                                raise TypeError(type(delta).__name__)
                        except _SHAPE_ERRORS as exc:
                            raise unexpected_shape(self.name) from exc
                        if delta:
                            texts.append(delta)
                        if events.pieces or events.ended:
                            if texts:
                                yield TextDelta("".join(texts), len(texts))
                                texts.clear()
                            for piece in events.pieces:
                                yield piece
                            events.pieces.clear()
                            if events.ended:
                                finish = self._finish(events, upstream_id)
                                ended = True
                                yield finish
                                break
                except UpstreamError:
                    if texts:  # what came before an in-band error reaches the client first
                        yield TextDelta("".join(texts), len(texts))
                    raise
                if texts:
                    yield TextDelta("".join(texts), len(texts))
            if not ended:
                if not events.complete:
                    raise stream_interrupted(self.name)
                finish = self._finish(events, upstream_id)
                ended = True
                yield finish
        except UpstreamError as error:
            # Once the Finish is out the reply is whole: a transport failure while draining the rest of
            # the body only costs the connection.
            if not ended:
                _with_upstream_id(error, upstream_id)
                raise
        except SSETooLarge as exc:
            what = "event" if isinstance(exc, SSEEventTooLarge) else "line"
            too_long = UpstreamBadResponse(
                f"upstream {self.name} sent an event-stream {what} longer than {exc.limit} bytes",
                provider=self.name,
                metadata={"limit": f"max_sse_{what}_bytes", "limit_bytes": str(exc.limit)},
            )
            raise _with_upstream_id(too_long, upstream_id) from exc
        finally:
            await response.aclose()

    def _finish(self, events: EventDecoder, upstream_id: str) -> Finish:
        try:
            finish = events.finish()
        except _SHAPE_ERRORS as exc:  # usage is read at the end by decoders that see it on every event
            raise unexpected_shape(self.name) from exc
        return replace(finish, upstream_request_id=upstream_id) if upstream_id else finish

    def _upstream_id(self, response: UpstreamResponse) -> str:
        header = self.request_id_header
        return upstream_request_id(response.headers.get(header)) if header else ""

    async def _post_json(
        self, path: str, body: dict[str, Any], request: ChatRequest, parse: Callable[[dict[str, Any]], Completion]
    ) -> Completion:
        """POST `body` and return what `parse` makes of the JSON object of a 200 answer."""
        completion = await self._post_for(path, body, request, parse)
        if type(completion.text) is not str:
            raise _with_upstream_id(unexpected_shape(self.name), completion.upstream_request_id)
        return completion

    async def _post_for(
        self, path: str, body: dict[str, Any], request: Outgoing, parse: Callable[[dict[str, Any]], _Answer]
    ) -> _Answer:
        """POST `body` and return what `parse` makes of the JSON object of a 200 answer, with the upstream's
        id of it; a shape `parse` does not expect is UpstreamBadResponse."""
        response = await self._post(path, body, request)
        upstream_id = self._upstream_id(response)
        try:
            if response.status != 200:
                raise await self._error_from_response(response)
            self._check_encoding(response)
            payload = loads_object((await self._read_body(response)).decode("utf-8", "replace"), self.name)
        except UpstreamError as error:
            _with_upstream_id(error, upstream_id)
            raise
        finally:
            await response.aclose()
        try:
            answer = parse(payload)
        except UpstreamError as error:
            _with_upstream_id(error, upstream_id)
            raise
        except _SHAPE_ERRORS as exc:
            raise _with_upstream_id(unexpected_shape(self.name), upstream_id) from exc
        return replace(answer, upstream_request_id=upstream_id) if upstream_id else answer

    async def _read_body(self, response: UpstreamResponse) -> bytes:
        limit = self._config.max_response_bytes
        body = await response.read(limit)
        if len(body) > limit:
            raise UpstreamBadResponse(
                f"upstream {self.name} sent an answer longer than {limit} bytes",
                provider=self.name,
                metadata={"limit": "max_response_bytes", "limit_bytes": str(limit)},
            )
        return body

    def _check_encoding(self, response: UpstreamResponse) -> None:
        """Refuse a compressed answer: the gateway asked for `identity` and never inflates a body."""
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in _IDENTITY:
            raise UpstreamBadResponse(
                f"upstream {self.name} sent a compressed answer the gateway did not ask for",
                provider=self.name,
                metadata={
                    "limit": "content_encoding",
                    "content_encoding": safe_identifier(encoding) or "other",
                    "accepted_encoding": "identity",
                },
            )

    async def _post(self, path: str, body: dict[str, Any], request: Outgoing) -> UpstreamResponse:
        content = json.dumps(body, separators=(",", ":")).encode()
        timeouts = request_timeouts(self._config, request.timeout_s)
        headers = dict(request.headers) if request.headers else None
        if self._signer is not None:
            headers = {**(headers or {}), **self._signer.headers(path, content)}
        if self._keys is None:
            return await self._transport.post(path, content, timeouts, headers)
        return await self._post_with_pool(self._keys, path, content, timeouts, headers or {})

    async def _post_with_pool(
        self, keys: KeyPool, path: str, content: bytes, timeouts: Timeouts, headers: dict[str, str]
    ) -> UpstreamResponse:
        """POST with the pool's next key; on to the next one at once while the upstream refuses (401/403)
        or rate limits (429) the key, and the last key's error when every usable key has been tried."""
        tried: set[str] = set()
        error: UpstreamError | None = None
        while (key := keys.take(tried)) is not None:
            response = await self._transport.post(path, content, timeouts, {**headers, **self.key_headers(key.value)})
            if response.status not in _KEY_STATUSES:
                return response
            try:
                error = _with_upstream_id(await self._error_from_response(response), self._upstream_id(response))
            finally:
                await response.aclose()
            if isinstance(error, UpstreamAuthFailed):
                keys.set_aside(key, response.status)
            elif isinstance(error, UpstreamRateLimited):
                keys.rest(key, error.retry_after_s)
            else:
                raise error
        assert error is not None  # take() gives a first key whatever the pool's state
        raise error

    async def _error_from_response(self, response: UpstreamResponse) -> UpstreamError:
        hint: ErrorHint = (None, None)
        if response.headers.get("content-encoding", "").strip().lower() in _IDENTITY:
            try:
                payload = json.loads(await response.read(defaults.MAX_ERROR_BODY_BYTES))
                if isinstance(payload, list) and payload:  # Google's JSON-array streams wrap the error
                    payload = payload[0]
                error = payload.get("error")
                if isinstance(error, dict):
                    hint = self._error_hint(error)
            except (ValueError, AttributeError, RecursionError, UpstreamError):
                pass  # the status code alone decides; the body is only a hint
        return error_for_status(self.name, response.status, response.headers, *hint)


def _with_upstream_id(error: UpstreamError, upstream_id: str) -> UpstreamError:
    if upstream_id:
        error.metadata["upstream_request_id"] = upstream_id
    return error


def loads_object(data: str, provider: str) -> dict[str, Any]:
    """`data` parsed as a JSON object, or UpstreamBadResponse."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise UpstreamBadResponse(f"upstream {provider} sent malformed JSON", provider=provider) from exc
    except RecursionError as exc:  # json's C parser stops at the interpreter's recursion limit, cleanly
        raise UpstreamBadResponse(
            f"upstream {provider} sent JSON nested too deep to read",
            provider=provider,
            metadata={"limit": "json_depth"},
        ) from exc
    if not isinstance(value, dict):
        raise UpstreamBadResponse(f"upstream {provider} sent a JSON {type(value).__name__}", provider=provider)
    return value


def token_count(value: object, field: str, provider: str) -> int:
    """`value` as a token count: an integer (an integral JSON number, 12.0 too) in [0, 2^31 - 1], absent
    (None) as 0; anything else, a huge, negative, non-finite or non-numeric count, is UpstreamBadResponse."""
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT:
        return value
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_TOKEN_COUNT:
        return int(value)
    raise UpstreamBadResponse(
        f"upstream {provider} reported a token count that is not an integer from 0 to {MAX_TOKEN_COUNT}",
        provider=provider,
        metadata={"limit": "token_count", "field": field, "limit_max": str(MAX_TOKEN_COUNT)},
    )


def checked_usage(prompt: int, completion: int, total: int, provider: str) -> Usage:
    """Usage of counts already checked by `token_count`, whose sums must fit the contract too."""
    for field, value in (("prompt_tokens", prompt), ("completion_tokens", completion), ("total_tokens", total)):
        token_count(value, field, provider)
    return Usage(prompt, completion, total)


def unexpected_shape(provider: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"upstream {provider} answered with JSON of an unexpected shape", provider=provider)


def stream_interrupted(provider: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"upstream {provider} ended the stream before it finished",
        provider=provider,
        reason="UPSTREAM_STREAM_INTERRUPTED",
    )


def make_transport(config: ProviderConfig, headers: Mapping[str, str]) -> Transport:
    """One pooled transport per provider, through the HTTP client its `transport` names (aiohttp unless
    asked: see transport.py for why)."""
    match config.transport:
        case "aiohttp":
            return AiohttpTransport(
                config.name,
                config.base_url,
                headers,
                max_connections=config.max_connections,
                read_buffer_bytes=config.read_buffer_bytes,
            )
        case "httpx":
            return HttpxTransport(config.name, config.base_url, headers, max_connections=config.max_connections)
        case _:
            assert_never(config.transport)


def request_timeouts(config: ProviderConfig, timeout_s: float | None) -> Timeouts:
    """Time limits for one call: the provider's, each capped by what is left of the client's deadline,
    and the whole call (body included) limited to it.

    The limits end a little before the deadline, so that the client gets the gateway's DEADLINE_EXCEEDED
    with the phase in ErrorInfo rather than gRPC's bare one, even from a stream that trickles or stalls
    after its headers.
    """
    remaining = defaults.REQUEST_TIMEOUT_S if timeout_s is None else _before_deadline(timeout_s)
    return Timeouts(
        pool_s=min(defaults.POOL_TIMEOUT_S, remaining),
        connect_s=min(config.connect_timeout_s, remaining),
        read_s=min(config.read_timeout_s, remaining),
        total_s=None if timeout_s is None else remaining,
    )


def _before_deadline(timeout_s: float) -> float:
    """What is left of the client's deadline, less a margin for the gateway to answer in."""
    margin = min(
        max(timeout_s * defaults.DEADLINE_MARGIN_SHARE, defaults.DEADLINE_MARGIN_S), defaults.DEADLINE_MARGIN_MAX_S
    )
    return max(timeout_s - margin, timeout_s / 2, 0.001)
