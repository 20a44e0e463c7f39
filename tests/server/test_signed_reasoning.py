"""Signed reasoning blocks on each provider's wire: read from Anthropic's thinking and redacted_thinking
blocks and Gemini's thought signatures, bounded, and sent back in the right shape to the provider that made
them only. Also Anthropic's 1-hour cache TTL on the wire and its write split in usage."""

from __future__ import annotations

import json

import pytest

from server.errors import UpstreamBadResponse
from server.providers.anthropic import AnthropicProvider
from server.providers.anthropic import request_body as anthropic_body
from server.providers.anthropic import usage_from as anthropic_usage
from server.providers.gemini import UNSIGNED_CALL, GeminiProvider
from server.providers.gemini import request_body as gemini_body
from server.providers.signed import MAX_THINKING_BYTES
from server.types import (
    ChatMessage,
    ChatRequest,
    Reasoning,
    ReasoningBlock,
    ReasoningEffort,
    Role,
    SamplingParams,
    ToolCall,
    Usage,
)
from server.validation import MAX_SIGNATURE_BYTES
from tests.mock_upstream import collect, scripted, sse
from tests.server.test_reasoning_mapping import THINKING_STREAM

LOW = ReasoningEffort.LOW
THOUGHT = ReasoningBlock("p", "Let me think.", "EqQBCgIYAh")
REDACTED = ReasoningBlock("p", redacted="EmwKAhgB")


def request(*messages: ChatMessage, reasoning: Reasoning | None = None) -> ChatRequest:
    return ChatRequest("m", messages, SamplingParams(reasoning=reasoning), max_output_tokens=4096)


async def test_anthropic_streams_its_signed_blocks_whole_in_the_finish_asked_for_or_not() -> None:
    body = sse(THINKING_STREAM)
    for include in (True, False):
        outcome = await collect(scripted(AnthropicProvider, body), request(reasoning=Reasoning(LOW, include=include)))
        assert outcome.finish is not None
        assert outcome.finish.reasoning_blocks == (THOUGHT, REDACTED)


async def test_anthropic_whole_answers_carry_their_signed_blocks() -> None:
    message = {
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAh"},
            {"type": "redacted_thinking", "data": "EmwKAhgB"},
            {"type": "text", "text": "Yes."},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 4, "output_tokens": 9},
    }
    completion = await scripted(AnthropicProvider, json.dumps(message).encode()).complete(request())
    assert completion.reasoning_blocks == (THOUGHT, REDACTED)


@pytest.mark.parametrize(
    ("block", "limit"),
    [
        ({"type": "redacted_thinking", "data": "not base64!"}, "max_redacted_bytes"),
        ({"type": "thinking", "thinking": "x", "signature": "A" * (MAX_SIGNATURE_BYTES + 1)}, "max_signature_bytes"),
        ({"type": "thinking", "thinking": "x" * (MAX_THINKING_BYTES + 1), "signature": "A"}, "max_thinking_bytes"),
    ],
)
async def test_a_hostile_signed_block_is_a_bad_response(block: dict[str, object], limit: str) -> None:
    message = {"type": "message", "content": [block], "stop_reason": "end_turn"}
    with pytest.raises(UpstreamBadResponse) as raised:
        await scripted(AnthropicProvider, json.dumps(message).encode()).complete(request())
    assert raised.value.metadata["limit"] == limit


def assistant(*blocks: ReasoningBlock, content: str = "", calls: tuple[ToolCall, ...] = ()) -> ChatMessage:
    return ChatMessage(Role.ASSISTANT, content, tool_calls=calls, reasoning_blocks=blocks)


CALL = ToolCall("toolu_1", "get_weather", '{"city":"Paris"}')


def test_anthropic_gets_its_own_blocks_back_first_and_never_another_providers() -> None:
    foreign = ReasoningBlock("gemini", signature="R2VtaW5p", tool_call_id="toolu_1")
    messages = (
        ChatMessage(Role.USER, "weather?"),
        assistant(THOUGHT, foreign, REDACTED, content="Checking.", calls=(CALL,)),
        ChatMessage(Role.TOOL, "18 degrees", tool_call_id="toolu_1"),
    )
    body = anthropic_body(request(*messages), provider="p")
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAh"},
            {"type": "redacted_thinking", "data": "EmwKAhgB"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    }
    # Sent to another provider (a fallback), the blocks are dropped and the message is as without them.
    other = anthropic_body(request(*messages), provider="claude-backup")
    assert other["messages"][1]["content"][0] == {"type": "text", "text": "Checking."}
    assert "signature" not in json.dumps(other)
    assert "EmwKAhgB" not in json.dumps(other)


def test_anthropic_cache_breakpoints_carry_a_one_hour_ttl() -> None:
    messages = (
        ChatMessage(Role.SYSTEM, "rules", cache=True, cache_ttl_s=3600),
        ChatMessage(Role.USER, "doc", cache=True, cache_ttl_s=300),
        ChatMessage(Role.USER, "q", cache=True),
    )
    body = anthropic_body(request(*messages))
    assert body["system"] == [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert [b["cache_control"] for b in body["messages"][0]["content"]] == [{"type": "ephemeral"}] * 2


def test_anthropic_usage_splits_writes_by_ttl_when_it_says_and_by_the_request_when_not() -> None:
    raw = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 50,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 5,
    }
    split = Usage(360, 5, 365, cached_prompt_tokens=50, cache_write_tokens=300, cache_write_1h_tokens=200)
    assert anthropic_usage(raw, None, "p") == split
    assert anthropic_usage(raw, None, "p", hour_writes=True) == split
    del raw["cache_creation"]
    assert anthropic_usage(raw, None, "p").cache_write_1h_tokens == 0
    assert anthropic_usage(raw, None, "p", hour_writes=True).cache_write_1h_tokens == 300  # an upper bound


def gemini_event(parts: list[dict[str, object]], finish: str | None = None) -> str:
    candidate: dict[str, object] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return "data: " + json.dumps({"candidates": [candidate], "responseId": "r"})


async def test_gemini_thought_signatures_are_signed_blocks_anchored_to_their_calls() -> None:
    body = sse(
        [
            gemini_event([{"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "U2lnQQ=="}]),
            gemini_event([{"functionCall": {"name": "b", "args": {}}}]),
            gemini_event([{"text": "", "thoughtSignature": "U2lnVA=="}], "STOP"),
        ]
    )
    outcome = await collect(scripted(GeminiProvider, body), request())
    assert outcome.finish is not None
    first_id = outcome.events[0].id  # type: ignore[union-attr]
    assert outcome.finish.reasoning_blocks == (
        ReasoningBlock("p", signature="U2lnQQ==", tool_call_id=first_id),
        ReasoningBlock("p", signature="U2lnVA=="),
    )


def test_gemini_gets_each_signature_back_on_its_part_and_never_another_providers() -> None:
    calls = (ToolCall("call_a", "a", "{}"), ToolCall("call_b", "b", "{}"))
    messages = (
        ChatMessage(Role.USER, "go"),
        assistant(
            ReasoningBlock("gemini", signature="U2lnQQ==", tool_call_id="call_a"),
            ReasoningBlock("anthropic", "thought", "QW50aHJvcGlj"),
            calls=calls,
        ),
        ChatMessage(Role.TOOL, "1", tool_call_id="call_a"),
        ChatMessage(Role.TOOL, "2", tool_call_id="call_b"),
        assistant(
            ReasoningBlock("anthropic", "thought", "QW50aHJvcGlj"),
            ReasoningBlock("gemini", signature="U2lnVA=="),
            content="done",
        ),
    )
    contents = gemini_body(request(*messages), provider="gemini")["contents"]
    assert contents[1]["parts"] == [
        {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "U2lnQQ=="},
        {"functionCall": {"name": "b", "args": {}}},
    ]
    assert contents[3]["parts"] == [{"text": "done", "thoughtSignature": "U2lnVA=="}]
    assert "QW50aHJvcGlj" not in json.dumps(contents)
    # Another provider gets none of them: the first call carries Google's placeholder instead.
    contents = gemini_body(request(*messages), provider="gemini-eu")["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] == UNSIGNED_CALL == "skip_thought_signature_validator"
    assert "U2lnQQ==" not in json.dumps(contents)
    assert "U2lnVA==" not in json.dumps(contents)


def test_a_gemini_text_signature_beside_calls_goes_on_the_text_never_on_an_unsigned_call() -> None:
    calls = (ToolCall("call_a", "a", "{}"), ToolCall("call_b", "b", "{}"))
    text = ReasoningBlock("gemini", signature="VGV4dA==")
    first = ReasoningBlock("gemini", signature="U2lnQQ==", tool_call_id="call_a")
    with_text = gemini_body(request(assistant(text, first, content="Checking.", calls=calls)), provider="gemini")
    assert with_text["contents"][0]["parts"] == [
        {"text": "Checking.", "thoughtSignature": "VGV4dA=="},
        {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "U2lnQQ=="},
        {"functionCall": {"name": "b", "args": {}}},
    ]
    without_text = gemini_body(request(assistant(text, first, calls=calls)), provider="gemini")
    assert without_text["contents"][0]["parts"] == [
        {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "U2lnQQ=="},
        {"functionCall": {"name": "b", "args": {}}},
    ]
