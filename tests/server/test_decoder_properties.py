"""Property tests: whatever values an upstream puts in its events or its whole answer (huge, negative and
non-finite numbers, JSON nested 100,000 deep, strings where numbers belong, objects where strings belong),
each of the three providers ends the call with deltas then one Finish whose usage fits the contract, or
with one of the documented upstream errors, and never with Python's own exception.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.convert import final_chunk, generate_response
from server.errors import UpstreamError, to_rpc_status
from server.providers.anthropic import AnthropicProvider
from server.providers.base import Provider
from server.providers.gemini import GeminiProvider
from server.providers.http import MAX_TOKEN_COUNT
from server.providers.openai import OpenAIProvider
from server.types import Completion, Finish, TextDelta, Usage
from tests.mock_upstream import chat, collect, scripted, sse

# The reasons an upstream's answer may end a call with (README: Errors).
DOCUMENTED_REASONS = {
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_STREAM_INTERRUPTED",
    "UPSTREAM_UNAVAILABLE",
    "UPSTREAM_RATE_LIMITED",
    "UPSTREAM_REJECTED_REQUEST",
    "UPSTREAM_AUTH_FAILED",
    "UPSTREAM_REQUEST_FAILED",
}
# JSON number tokens Python's own json.dumps never writes, put in place of their placeholders.
RAW_NUMBERS = ("1e400", "-1e400", "1e308", "2147483648", "-2147483649", "123456789012345678901234567890", "1.5")
DEEP = "[" * 100_000 + "]" * 100_000
PLACEHOLDERS = {f"@raw{i}@": token for i, token in enumerate(RAW_NUMBERS)} | {"@deep@": DEEP}

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([f"@raw{i}@" for i in range(len(RAW_NUMBERS))]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8), st.just("@deep@"))
hostile = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def like(draw: st.DrawFn, template: Any) -> Any:
    """`template` with any of its values (at any depth) perhaps replaced by a hostile one."""
    if draw(st.integers(0, 4)) == 0:
        return draw(hostile)
    if isinstance(template, dict):
        return {key: draw(like(value)) for key, value in template.items()}
    if isinstance(template, list):
        return [draw(like(value)) for value in template]
    return template


def dumps(value: Any) -> str:
    text = json.dumps(value)  # NaN and Infinity as Python writes them, which json.loads reads back
    for placeholder, token in PLACEHOLDERS.items():
        text = text.replace(f'"{placeholder}"', token)
    return text


OPENAI_STREAM = [
    {"choices": [{"index": 0, "delta": {"content": "hi"}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}},
]
ANTHROPIC_STREAM = [
    ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 2}}}),
    ("content_block_start", {"type": "content_block_start", "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
    ("message_stop", {"type": "message_stop"}),
]
GEMINI_EVENT = {
    "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3, "thoughtsTokenCount": 1},
    "responseId": "r-1",
}
OPENAI_WHOLE = {
    "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 3},
}
ANTHROPIC_WHOLE = {
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 2, "output_tokens": 3, "cache_read_input_tokens": 1},
}


def fits(usage: Usage | None) -> bool:
    counts = () if usage is None else (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    return all(type(count) is int and 0 <= count <= MAX_TOKEN_COUNT for count in counts)


def assert_documented(error: UpstreamError) -> None:
    assert error.reason in DOCUMENTED_REASONS, error
    to_rpc_status(error)  # maps without raising (a RetryInfo delay that fits, metadata of strings)


def assert_streamed_or_documented(provider: Provider) -> None:
    outcome = asyncio.run(collect(provider, chat()))
    if outcome.error is not None:
        assert_documented(outcome.error)
        assert all(isinstance(event, TextDelta) for event in outcome.events)
        return
    *deltas, finish = outcome.events
    assert all(isinstance(event, TextDelta) and isinstance(event.text, str) for event in deltas)
    assert isinstance(finish, Finish)
    assert fits(finish.usage)
    final_chunk(finish)  # the protobuf the client gets is built without error


def assert_completed_or_documented(provider: Provider) -> None:
    async def complete() -> Completion | UpstreamError:
        try:
            return await provider.complete(chat())
        except UpstreamError as error:
            return error
        finally:
            await provider.aclose()

    result = asyncio.run(complete())
    if isinstance(result, UpstreamError):
        assert_documented(result)
        return
    assert isinstance(result.text, str)
    assert fits(result.usage)
    generate_response(result)


PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def stream_of(events: list[str], kind: Callable[..., Provider]) -> Provider:
    return scripted(kind, sse(events))


@PROPERTY
@given(st.lists(like(OPENAI_STREAM[0]), max_size=2), like(OPENAI_STREAM[1]), like(OPENAI_STREAM[2]), st.booleans())
def test_openai_events_with_hostile_values(deltas: list[Any], finish: Any, usage: Any, done: bool) -> None:
    events = [f"data: {dumps(chunk)}" for chunk in (*deltas, finish, usage)] + (["data: [DONE]"] if done else [])
    assert_streamed_or_documented(stream_of(events, OpenAIProvider))


@PROPERTY
@given(st.tuples(*(like(data) for _, data in ANTHROPIC_STREAM)))
def test_anthropic_events_with_hostile_values(datas: tuple[Any, ...]) -> None:
    events = [f"event: {name}\ndata: {dumps(data)}" for (name, _), data in zip(ANTHROPIC_STREAM, datas, strict=True)]
    assert_streamed_or_documented(stream_of(events, AnthropicProvider))


@PROPERTY
@given(st.lists(like(GEMINI_EVENT), min_size=1, max_size=3))
def test_gemini_events_with_hostile_values(chunks: list[Any]) -> None:
    assert_streamed_or_documented(stream_of([f"data: {dumps(chunk)}" for chunk in chunks], GeminiProvider))


@PROPERTY
@given(
    st.sampled_from(
        [(OpenAIProvider, OPENAI_WHOLE), (AnthropicProvider, ANTHROPIC_WHOLE), (GeminiProvider, GEMINI_EVENT)]
    ).flatmap(lambda pair: st.tuples(st.just(pair[0]), like(pair[1])))
)
def test_whole_answers_with_hostile_values(case: tuple[Callable[..., Provider], Any]) -> None:
    kind, payload = case
    assert_completed_or_documented(scripted(kind, dumps(payload).encode()))


@PROPERTY
@given(st.sampled_from([OpenAIProvider, AnthropicProvider, GeminiProvider]), hostile)
def test_error_bodies_with_hostile_values_keep_their_status(kind: Callable[..., Provider], body: Any) -> None:
    for status, reason in ((429, "UPSTREAM_RATE_LIMITED"), (500, "UPSTREAM_UNAVAILABLE")):
        outcome = asyncio.run(collect(scripted(kind, dumps({"error": body}).encode(), status=status)))
        assert outcome.error is not None
        assert (outcome.events, outcome.error.reason) == ([], reason)
        to_rpc_status(outcome.error)
