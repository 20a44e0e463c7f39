"""Reasoning options on each provider's wire, and the reasoning text and tokens from their answers."""

from __future__ import annotations

import json

import pytest

from server.providers.anthropic import AnthropicProvider
from server.providers.anthropic import request_body as anthropic_body
from server.providers.gemini import request_body as gemini_body
from server.providers.openai import OpenAIProvider
from server.types import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    Reasoning,
    ReasoningDelta,
    ReasoningEffort,
    Role,
    SamplingParams,
    TextDelta,
    Usage,
)
from tests.mock_upstream import collect, scripted, sse

LOW, MEDIUM, HIGH = ReasoningEffort.LOW, ReasoningEffort.MEDIUM, ReasoningEffort.HIGH


def request(reasoning: Reasoning | None, max_tokens: int | None = None) -> ChatRequest:
    params = SamplingParams(max_tokens=max_tokens, reasoning=reasoning)
    return ChatRequest("m", (ChatMessage(Role.USER, "hi"),), params, max_output_tokens=64_000)


@pytest.mark.parametrize(
    ("reasoning", "budget", "level"),
    [
        (Reasoning(LOW), 1024, LOW),
        (Reasoning(MEDIUM), 8192, MEDIUM),
        (Reasoning(HIGH), 24576, HIGH),
        (Reasoning(None, 1024), 1024, LOW),
        (Reasoning(None, 5000), 5000, MEDIUM),
        (Reasoning(None, 9000), 9000, HIGH),
        (Reasoning(HIGH, 2000), 2000, HIGH),  # both set: each provider takes its own
        (Reasoning(None, None, include=True), None, None),
    ],
)
def test_an_effort_or_a_budget_gives_each_providers_setting(
    reasoning: Reasoning, budget: int | None, level: ReasoningEffort | None
) -> None:
    assert (reasoning.budget(), reasoning.level()) == (budget, level)


def test_anthropic_thinking_takes_at_least_its_minimum_and_max_tokens_grows_by_the_budget() -> None:
    assert anthropic_body(request(Reasoning(None, 100)))["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    body = anthropic_body(request(Reasoning(MEDIUM), max_tokens=500))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert body["max_tokens"] == 8692
    unset = anthropic_body(request(Reasoning(MEDIUM)))
    assert unset["max_tokens"] == 64_000  # the model's limit, which holds the budget
    assert "thinking" not in anthropic_body(request(Reasoning(None, None, include=True)))


def test_gemini_thinking_config_only_with_something_to_say() -> None:
    assert "generationConfig" not in gemini_body(request(Reasoning()))
    assert gemini_body(request(Reasoning(None, None, include=True)))["generationConfig"] == {
        "thinkingConfig": {"includeThoughts": True}
    }


def event(kind: str, **fields: object) -> str:
    return f"event: {kind}\ndata: " + json.dumps({"type": kind, **fields})


THINKING_STREAM = [
    event("message_start", message={"usage": {"input_tokens": 4, "output_tokens": 1}}),
    event("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""}),
    event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Let me"}),
    event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": " think."}),
    event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "EqQBCgIYAh"}),
    event("content_block_stop", index=0),
    event("content_block_start", index=1, content_block={"type": "redacted_thinking", "data": "EmwKAhgB"}),
    event("content_block_stop", index=1),
    event("content_block_start", index=2, content_block={"type": "text", "text": ""}),
    event("content_block_delta", index=2, delta={"type": "text_delta", "text": "Yes."}),
    event("content_block_stop", index=2),
    event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 9}),
    event("message_stop"),
]


async def test_anthropic_thinking_deltas_are_reasoning_when_asked_for_and_signatures_never() -> None:
    body = sse(THINKING_STREAM)
    shown = await collect(scripted(AnthropicProvider, body), request(Reasoning(LOW, include=True)))
    assert shown.events[:-1] == [ReasoningDelta("Let me"), ReasoningDelta(" think."), TextDelta("Yes.")]
    assert shown.finish.usage == Usage(4, 9, 13)
    hidden = await collect(scripted(AnthropicProvider, body), request(Reasoning(LOW)))
    assert hidden.events[:-1] == [TextDelta("Yes.")]


async def test_anthropic_whole_thinking_blocks_are_the_reasoning() -> None:
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
    raw = json.dumps(message).encode()
    shown = await scripted(AnthropicProvider, raw).complete(request(Reasoning(LOW, include=True)))
    assert (shown.text, shown.reasoning, shown.reason) == ("Yes.", "Let me think.", FinishReason.STOP)
    hidden = await scripted(AnthropicProvider, raw).complete(request(Reasoning(LOW)))
    assert (hidden.text, hidden.reasoning) == ("Yes.", "")


def chunk(delta: dict[str, object], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


async def test_a_compatible_servers_reasoning_content_is_reasoning_when_asked_for() -> None:
    usage = {
        "prompt_tokens": 4,
        "completion_tokens": 12,
        "total_tokens": 16,
        "completion_tokens_details": {"reasoning_tokens": 10},
    }
    body = sse(
        [
            chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
            chunk({"reasoning_content": "Hmm,"}),
            chunk({"reasoning_content": " yes."}),
            chunk({"content": "Yes"}),
            chunk({}, "stop"),
            "data: " + json.dumps({"id": "c", "choices": [], "usage": usage}),
            "data: [DONE]",
        ]
    )
    shown = await collect(scripted(OpenAIProvider, body), request(Reasoning(LOW, include=True)))
    assert shown.events[:-1] == [ReasoningDelta("Hmm,"), ReasoningDelta(" yes."), TextDelta("Yes")]
    assert shown.finish.usage == Usage(4, 12, 16, reasoning_tokens=10)
    hidden = await collect(scripted(OpenAIProvider, body), request(Reasoning(LOW)))
    assert hidden.events[:-1] == [TextDelta("Yes")]


async def test_a_compatible_servers_whole_reasoning_content_is_the_reasoning() -> None:
    payload = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Yes", "reasoning_content": "Hmm, yes."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16},
    }
    raw = json.dumps(payload).encode()
    shown = await scripted(OpenAIProvider, raw).complete(request(Reasoning(LOW, include=True)))
    assert (shown.text, shown.reasoning) == ("Yes", "Hmm, yes.")
    hidden = await scripted(OpenAIProvider, raw).complete(request(Reasoning(LOW)))
    assert (hidden.text, hidden.reasoning) == ("Yes", "")
