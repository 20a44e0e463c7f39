"""The Anthropic adapter: what the Messages API receives, and how its answers become neutral events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.config import ProviderConfig
from server.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from server.providers import build_provider
from server.providers.anthropic import ANTHROPIC_VERSION, AnthropicProvider, request_body
from server.types import FinishReason, Role, Usage
from tests.fakes.anthropic_upstream import MESSAGES_PATH, FakeAnthropicUpstream
from tests.mock_upstream import chat, collect, scripted, sse

KEY = "sk-ant-test-0123456789abcdef"
S, U, A = Role.SYSTEM, Role.USER, Role.ASSISTANT


def test_system_messages_are_lifted_and_joined_and_same_role_turns_merged() -> None:
    body = request_body(
        chat((S, "be brief"), (U, "hi"), (S, "be kind"), (U, "and now?"), (A, "ok"), (A, "more"), (U, "end"))
    )
    assert body["system"] == "be brief\n\nbe kind"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "and now?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": "more"}]},
        {"role": "user", "content": "end"},
    ]


def test_max_tokens_is_always_sent_and_unset_options_are_not() -> None:
    assert request_body(chat((U, "hi"))) == {
        "model": "model-x",
        "max_tokens": 1000,  # the model's output limit (ChatRequest.max_output_tokens)
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_sampling_options_are_mapped() -> None:
    body = request_body(chat((U, "hi"), temperature=0.0, top_p=0.5, max_tokens=50, stop=("END", "STOP")))
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.0, 0.5, 50)
    assert body["stop_sequences"] == ["END", "STOP"]


async def test_the_upstream_receives_the_key_version_and_a_streaming_body() -> None:
    async with FakeAnthropicUpstream(api_key=KEY) as fake:
        config = ProviderConfig(name="a", kind="anthropic", base_url=fake.base_url, api_key=KEY)
        provider = build_provider(config)
        assert isinstance(provider, AnthropicProvider)
        outcome = await collect(provider, chat((S, "be brief"), (U, "hello brave world"), temperature=0.5))
    assert outcome.error is None
    assert "".join(outcome.text) == "hello brave world"  # written at once: one read, so perhaps one delta
    [sent] = fake.requests
    assert (sent.method, sent.path) == ("POST", MESSAGES_PATH)
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == ANTHROPIC_VERSION == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "model-x",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hello brave world"}],
        "system": "be brief",
        "temperature": 0.5,
        "stream": True,
    }


async def test_a_keyless_provider_sends_no_key_and_a_wrong_key_is_an_auth_failure() -> None:
    async with FakeAnthropicUpstream(api_key=KEY) as fake:
        keyless = build_provider(ProviderConfig(name="a", kind="anthropic", base_url=fake.base_url))
        wrong = build_provider(ProviderConfig(name="a", kind="anthropic", base_url=fake.base_url, api_key="sk-x"))
        missing, mistaken = await collect(keyless), await collect(wrong)
    assert "x-api-key" not in fake.requests[0].headers
    for outcome in (missing, mistaken):
        assert isinstance(outcome.error, UpstreamAuthFailed)
        assert outcome.error.metadata["upstream_error_type"] == "authentication_error"


def event(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}"


START = event("message_start", message={"usage": {"input_tokens": 10, "output_tokens": 1}})
STOP = event("message_stop")


def delta(stop_reason: str | None = None, output_tokens: int = 2) -> str:
    return event("message_delta", delta={"stop_reason": stop_reason}, usage={"output_tokens": output_tokens})


def text(piece: str, index: int = 0) -> str:
    return event("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})


async def test_only_text_deltas_are_text() -> None:
    body = sse(
        [
            START,
            event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
            event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"}),
            event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "EqQB"}),
            event("content_block_stop", index=0),
            event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
            "event: ping\ndata: {}",
            text("Hel", 1),
            text("lo", 1),
            event("content_block_stop", index=1),
            event("content_block_start", index=2, content_block={"type": "tool_use", "id": "t", "name": "f"}),
            event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"a"'}),
            event("content_block_stop", index=2),
            delta("tool_use"),
            STOP,
        ]
    )
    outcome = await collect(scripted(AnthropicProvider, body))
    assert outcome.text == ["Hello"]  # one read: the two text events are one delta
    assert outcome.finish.reason is FinishReason.TOOL_CALLS
    assert outcome.finish.usage == Usage(10, 2, 12)


async def test_cached_prompt_tokens_count_as_prompt_tokens_and_apart() -> None:
    usage = {"input_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000}
    body = sse([event("message_start", message={"usage": usage}), text("x"), delta("end_turn", 7), STOP])
    assert (await collect(scripted(AnthropicProvider, body))).finish.usage == Usage(
        1105, 7, 1112, cached_prompt_tokens=1000, cache_write_tokens=100
    )


@pytest.mark.parametrize(
    ("stop_reason", "reason"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("pause_turn", FinishReason.UNSPECIFIED),
        ("something_new", FinishReason.UNSPECIFIED),
    ],
)
async def test_stop_reasons(stop_reason: str, reason: FinishReason) -> None:
    body = sse([START, text("x"), delta(stop_reason), STOP])
    assert (await collect(scripted(AnthropicProvider, body))).finish.reason is reason


async def test_a_stop_reason_without_message_stop_is_a_whole_reply() -> None:
    outcome = await collect(scripted(AnthropicProvider, sse([START, text("x"), delta("end_turn")])))
    assert outcome.finish.reason is FinishReason.STOP


async def test_a_body_that_ends_before_a_stop_reason_is_an_interrupted_stream() -> None:
    outcome = await collect(scripted(AnthropicProvider, sse([START, text("x")])))
    assert outcome.text == ["x"]
    assert isinstance(outcome.error, UpstreamUnavailable)
    assert outcome.error.reason == "UPSTREAM_STREAM_INTERRUPTED"


async def test_what_follows_message_stop_is_drained_not_read() -> None:
    body = sse([START, text("x"), delta("end_turn"), STOP, event("error", error={"type": "overloaded_error"})])
    outcome = await collect(scripted(AnthropicProvider, body))
    assert outcome.error is None
    assert outcome.finish.reason is FinishReason.STOP


async def test_an_event_stream_split_into_single_bytes_decodes_the_same() -> None:
    body = sse([START, text("naïve"), text(" café"), delta("end_turn"), STOP])
    outcome = await collect(scripted(AnthropicProvider, body, split=True))
    assert outcome.text == ["naïve", " café"]
    assert outcome.finish.usage == Usage(10, 2, 12)


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("overloaded_error", UpstreamUnavailable),
        ("api_error", UpstreamUnavailable),
        ("rate_limit_error", UpstreamRateLimited),
        ("invalid_request_error", UpstreamRejected),
        ("request_too_large", UpstreamRejected),
        ("authentication_error", UpstreamAuthFailed),
        ("permission_error", UpstreamAuthFailed),
        ("not_found_error", UpstreamFailed),
    ],
)
async def test_in_band_error_events_by_type(error_type: str, kind: type[UpstreamError]) -> None:
    body = sse([START, text("x"), event("error", error={"type": error_type, "message": f"{KEY} is bad"})])
    outcome = await collect(scripted(AnthropicProvider, body))
    assert outcome.text == ["x"]
    assert type(outcome.error) is kind
    assert outcome.error.metadata["upstream_error_type"] == error_type
    assert KEY not in str(outcome.error)


async def test_http_529_is_unavailable_and_429_carries_retry_after() -> None:
    overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    limited = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    busy = await collect(scripted(AnthropicProvider, overloaded, status=529))
    slow = await collect(scripted(AnthropicProvider, limited, status=429, headers={"retry-after": "12"}))
    assert type(busy.error) is UpstreamUnavailable
    assert busy.error.metadata == {
        "provider": "p",
        "upstream_error_type": "overloaded_error",
        "upstream_http_status": "529",
    }
    assert isinstance(slow.error, UpstreamRateLimited)
    assert slow.error.retry_after_s == 12.0


async def test_complete_joins_the_text_blocks() -> None:
    message = {
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            {"type": "text", "text": " there"},
        ],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 4, "cache_read_input_tokens": 6, "output_tokens": 2},
    }
    completion = await scripted(AnthropicProvider, json.dumps(message).encode()).complete(chat())
    assert (completion.text, completion.reason, completion.usage) == (
        "Hello there",
        FinishReason.LENGTH,
        Usage(10, 2, 12, cached_prompt_tokens=6),
    )


async def test_complete_without_content_is_a_bad_response() -> None:
    with pytest.raises(UpstreamError) as raised:
        await scripted(AnthropicProvider, b'{"type":"message","content":7}').complete(chat())
    assert raised.value.reason == "UPSTREAM_BAD_RESPONSE"
