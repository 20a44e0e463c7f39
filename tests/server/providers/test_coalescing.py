"""The relay of an event stream (server/providers/http.py) joins the texts of the events one read brings.

Each case scripts an OpenAI-compatible answer, delivered whole in one read (as when the upstream wrote it
at once, or the gateway fell behind) or a byte per read (a gateway that keeps up with a slow upstream).
"""

from __future__ import annotations

import json
from typing import Any

from server.providers.openai import OpenAIProvider
from server.types import (
    ChatMessage,
    ChatRequest,
    Finish,
    FinishReason,
    Reasoning,
    ReasoningDelta,
    Role,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from tests.mock_upstream import collect, scripted, sse

REQUEST = ChatRequest(
    "m", (ChatMessage(Role.USER, "hi"),), SamplingParams(reasoning=Reasoning(include=True)), max_output_tokens=100
)
USAGE = {"prompt_tokens": 1, "completion_tokens": 7, "total_tokens": 8}


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


def text(content: str) -> str:
    return chunk({"content": content})


TOOL_START = chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]})
TOOL_ARGS = chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
CLOSING = [chunk({}, "tool_calls"), "data: " + json.dumps({"id": "c", "choices": [], "usage": USAGE}), "data: [DONE]"]
# Every channel, interleaved: text runs broken by reasoning and by a tool call's pieces.
INTERLEAVED = sse(
    [
        chunk({"role": "assistant", "content": ""}),
        text("a"),
        text("b"),
        chunk({"reasoning_content": "r1"}),
        chunk({"reasoning_content": "r2"}),
        text("c"),
        TOOL_START,
        text("d"),
        TOOL_ARGS,
        text("e"),
        text("f"),
        *CLOSING,
    ]
)
FINISH = Finish(FinishReason.TOOL_CALLS, Usage(1, 7, 8), upstream_request_id="")


async def test_texts_of_one_read_are_one_delta_and_the_order_of_channels_is_kept() -> None:
    outcome = await collect(scripted(OpenAIProvider, INTERLEAVED), REQUEST)

    assert outcome.error is None
    assert outcome.events == [
        TextDelta("ab", 2),
        ReasoningDelta("r1"),  # reasoning and tool-call pieces are never joined
        ReasoningDelta("r2"),
        TextDelta("c"),
        ToolCallDelta(0, "call_1", "f"),
        TextDelta("d"),
        ToolCallDelta(0, arguments="{}"),
        TextDelta("ef", 2),
        FINISH,
    ]


async def test_an_event_per_read_is_a_delta_per_event() -> None:
    outcome = await collect(scripted(OpenAIProvider, INTERLEAVED, split=True), REQUEST)

    assert outcome.error is None
    assert [e for e in outcome.events if isinstance(e, TextDelta)] == [TextDelta(t) for t in "abcdef"]
    assert len(outcome.events) == 11


async def test_the_text_before_an_in_band_error_reaches_the_client_first() -> None:
    error = "data: " + json.dumps({"error": {"type": "server_error", "message": "overloaded"}})
    outcome = await collect(scripted(OpenAIProvider, sse([text("a"), text("b"), error, text("c")])), REQUEST)

    assert outcome.events == [TextDelta("ab", 2)]
    assert outcome.error is not None
    assert outcome.error.reason == "UPSTREAM_UNAVAILABLE"


async def test_the_text_before_the_end_event_comes_before_the_finish() -> None:
    body = sse([text("a"), text("b"), chunk({}, "stop"), "data: [DONE]", text("never")])
    outcome = await collect(scripted(OpenAIProvider, body), REQUEST)

    assert outcome.events == [TextDelta("ab", 2), Finish(FinishReason.STOP, None)]
