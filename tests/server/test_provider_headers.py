"""Per-request headers through the Transport interface, and the upstream's id read from its answer's headers
(the in-memory transport of mock_upstream.py; real sockets: tests/integration/test_request_ids.py)."""

from __future__ import annotations

from dataclasses import replace

from server.config import ProviderConfig
from server.providers.openai import OpenAIProvider
from tests.mock_upstream import ScriptedTransport, chat, collect, sse

_DONE = sse(
    [
        'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}',
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        "data: [DONE]",
    ]
)


def provider(transport: ScriptedTransport) -> OpenAIProvider:
    return OpenAIProvider(ProviderConfig(name="p", kind="openai", base_url="http://upstream.test"), transport=transport)


async def test_the_requests_own_headers_reach_the_transport_and_the_upstreams_id_the_finish() -> None:
    transport = ScriptedTransport(200, {"X-Request-Id": "req_abc123"}, _DONE, step=len(_DONE))
    request = replace(chat(), headers=(("x-request-id", "call-1"),))

    outcome = await collect(provider(transport), request)

    assert transport.headers == [{"x-request-id": "call-1"}]
    assert outcome.text == ["hi"]
    assert outcome.finish.upstream_request_id == "req_abc123"


async def test_an_error_answer_names_the_upstreams_id() -> None:
    body = b'{"error": {"type": "rate_limit_exceeded", "message": "slow down"}}'
    transport = ScriptedTransport(429, {"x-request-id": "req_429"}, body, step=len(body))

    outcome = await collect(provider(transport))

    assert outcome.error is not None
    assert outcome.error.reason == "UPSTREAM_RATE_LIMITED"
    assert outcome.error.metadata["upstream_request_id"] == "req_429"


async def test_a_stream_cut_short_names_the_upstreams_id() -> None:
    body = sse(['data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'])
    transport = ScriptedTransport(200, {"x-request-id": "req_cut"}, body, step=len(body))

    outcome = await collect(provider(transport))

    assert outcome.text == ["hi"]
    assert outcome.error is not None
    assert outcome.error.reason == "UPSTREAM_STREAM_INTERRUPTED"
    assert outcome.error.metadata["upstream_request_id"] == "req_cut"


async def test_no_headers_of_its_own_is_none() -> None:
    transport = ScriptedTransport(200, {}, _DONE, step=len(_DONE))

    outcome = await collect(provider(transport))

    assert transport.headers == [{}]
    assert outcome.finish.upstream_request_id == ""
