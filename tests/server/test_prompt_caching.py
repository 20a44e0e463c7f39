"""Prompt caching: breakpoints on the Anthropic wire, cached and written prompt tokens from each provider's
usage, their prices in the catalog and the config, and the checks on breakpoints."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from server.config import ConfigError, load_config
from server.errors import FieldViolation, InvalidRequest
from server.providers.anthropic import request_body
from server.providers.gemini import GeminiProvider
from server.providers.openai import OpenAIProvider
from server.routing.catalog import BUILTIN_MODELS, Deployment, ModelConfig, Price, builtin_price, cost_of
from server.types import ChatMessage, ChatRequest, Role, SamplingParams, ToolCall, Usage
from server.validation import UncheckedMessage, check_request
from tests.mock_upstream import collect, scripted, sse

S, U, A, T = Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL


def request(*messages: ChatMessage) -> ChatRequest:
    return ChatRequest("claude-x", messages, SamplingParams(), max_output_tokens=100)


EPHEMERAL = {"type": "ephemeral"}


def test_a_breakpoint_marks_the_last_block_of_its_message_and_merged_turns_keep_theirs() -> None:
    body = request_body(
        request(
            ChatMessage(U, "the long document", cache=True),
            ChatMessage(U, "first question"),
            ChatMessage(A, "", tool_calls=(ToolCall("t1", "lookup", '{"q":"x"}'),), cache=True),
            ChatMessage(T, "found", tool_call_id="t1", cache=True),
            ChatMessage(U, "and now?"),
        )
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "the long document", "cache_control": EPHEMERAL},
                {"type": "text", "text": "first question"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}, "cache_control": EPHEMERAL}
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "found", "cache_control": EPHEMERAL},
                {"type": "text", "text": "and now?"},
            ],
        },
    ]
    assert "system" not in body


def test_a_system_breakpoint_makes_the_system_prompt_text_blocks() -> None:
    body = request_body(
        request(ChatMessage(S, "rules", cache=True), ChatMessage(S, "more rules"), ChatMessage(U, "hi"))
    )
    assert body["system"] == [
        {"type": "text", "text": "rules", "cache_control": EPHEMERAL},
        {"type": "text", "text": "more rules"},
    ]
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    # Without a breakpoint, the system prompt stays one string.
    plain = request_body(request(ChatMessage(S, "rules"), ChatMessage(S, "more"), ChatMessage(U, "hi")))
    assert plain["system"] == "rules\n\nmore"


def openai_usage_chunk(usage: Mapping[str, object]) -> str:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage})


async def test_openai_cached_tokens_are_cached_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    finish = '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
    body = sse(["data: " + finish, "data: " + openai_usage_chunk(usage), "data: [DONE]"])
    outcome = await collect(scripted(OpenAIProvider, body))
    assert outcome.finish is not None
    assert outcome.finish.usage == Usage(2006, 300, 2306, cached_prompt_tokens=1920)


async def test_deepseek_cache_hits_are_cached_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "total_tokens": 105,
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 36,
    }
    finish = '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
    body = sse(["data: " + finish, "data: " + openai_usage_chunk(usage), "data: [DONE]"])
    outcome = await collect(scripted(OpenAIProvider, body))
    assert outcome.finish is not None
    assert outcome.finish.usage == Usage(100, 5, 105, cached_prompt_tokens=64)


async def test_gemini_cached_content_tokens_are_cached_prompt_tokens() -> None:
    event = {
        "candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 5000,
            "candidatesTokenCount": 10,
            "totalTokenCount": 5010,
            "cachedContentTokenCount": 4096,
        },
    }
    outcome = await collect(scripted(GeminiProvider, sse(["data: " + json.dumps(event)])))
    assert outcome.finish is not None
    assert outcome.finish.usage == Usage(5000, 10, 5010, cached_prompt_tokens=4096)


def test_cached_and_written_tokens_are_priced_apart() -> None:
    price = Price(3.0, 15.0, cache_read_per_million=0.3, cache_write_per_million=3.75)
    usage = Usage(
        1_000_000 + 2_000_000 + 400_000, 100_000, 0, cached_prompt_tokens=2_000_000, cache_write_tokens=400_000
    )
    assert price.cost(usage) == pytest.approx(3.0 + 2 * 0.3 + 0.4 * 3.75 + 0.1 * 15.0)
    # No cache prices: cached tokens cost what input costs (the cost an upper bound, as before).
    assert Price(3.0, 15.0).cost(usage) == pytest.approx(3.4 * 3.0 + 0.1 * 15.0)
    # No cached tokens: the same as ever.
    assert price.cost(Usage(1_000_000, 1_000_000, 2_000_000)) == pytest.approx(18.0)


def test_one_hour_writes_are_priced_at_the_one_hour_price_else_the_five_minute_one() -> None:
    usage = Usage(1_000_000, 0, 1_000_000, cache_write_tokens=1_000_000, cache_write_1h_tokens=400_000)
    price = Price(3.0, 15.0, 0.3, 3.75, 6.0)
    assert price.cost(usage) == pytest.approx(0.6 * 3.75 + 0.4 * 6.0)
    # Without a 1-hour price, the 5-minute one; without either, the input price.
    assert Price(3.0, 15.0, 0.3, 3.75).cost(usage) == pytest.approx(3.75)
    assert Price(3.0, 15.0).cost(usage) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("upstream", "read", "write", "write_1h"),
    [
        ("claude-sonnet-4-5", 1.5, 18.75, 30.0),  # 0.1x, 1.25x and 2x of 15
        ("claude-haiku-4-5", 0.1, 1.25, 2.0),
        ("gpt-4.1", 2.0, 8.0, 8.0),  # 0.25x; OpenAI charges nothing extra to write
        ("gpt-4o", 1.25, 2.5, 2.5),  # 0.5x
        ("gpt-4o-mini", 0.075, 0.15, 0.15),
        ("gemini-2.5-pro", 0.3125, 1.25, 1.25),  # 0.25x
        ("deepseek-chat", 0.042, 0.42, 0.42),  # 0.1x
    ],
)
def test_built_in_models_have_their_providers_cache_prices(
    upstream: str, read: float, write: float, write_1h: float
) -> None:
    price = builtin_price(upstream)
    assert price is not None
    assert price.cache_read_per_million == pytest.approx(read)
    assert price.cache_write_per_million == pytest.approx(write)
    assert price.cache_write_1h_per_million == pytest.approx(write_1h)


def test_a_cached_call_costs_less_than_the_same_call_uncached() -> None:
    model = BUILTIN_MODELS["anthropic/claude-sonnet-4-5"]
    deployment = model.all_deployments[0]
    uncached = cost_of(model, deployment, Usage(10_000, 100, 10_100))
    cached = cost_of(model, deployment, Usage(10_000, 100, 10_100, cached_prompt_tokens=9_000))
    assert uncached is not None
    assert cached is not None
    assert cached == pytest.approx((1_000 * 15 + 9_000 * 1.5 + 100 * 75) / 1e6)
    assert cached < uncached


def test_built_in_models_cache_except_over_the_openai_wire_of_a_relay() -> None:
    assert "prompt_caching" in BUILTIN_MODELS["anthropic/claude-sonnet-4-5"].capabilities
    assert "prompt_caching" in BUILTIN_MODELS["openai/gpt-4.1"].capabilities
    assert "prompt_caching" in BUILTIN_MODELS["gemini/gemini-2.5-flash"].capabilities
    assert "prompt_caching" in BUILTIN_MODELS["deepseek/deepseek-reasoner"].capabilities
    assert "prompt_caching" not in BUILTIN_MODELS["holysheep/claude-sonnet-4-5"].capabilities


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_config_prices_take_cache_prices_and_caching_kinds_cache_by_default(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            providers:
              - {name: claude, kind: anthropic, base_url: "http://127.0.0.1:9", api_key_env: K}
              - {name: local, kind: openai, base_url: "http://127.0.0.1:9", api_key_env: K}
            models:
              - name: sonnet
                provider: claude
                price: {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75, cache_write_1h: 6}
              - {name: llama, provider: local, price: {input: 1, output: 2}}
              - {name: llama-cached, provider: local, capabilities: [tools, prompt_caching]}
              - {name: sonnet-plain, provider: claude, capabilities: [tools]}
            """,
        ),
        env={"K": "sk-test-key-0123456789"},
    )
    models = {m.name: m for m in config.models}
    assert models["sonnet"].price == Price(3.0, 15.0, 0.3, 3.75, 6.0)
    assert models["llama"].price == Price(1.0, 2.0)
    assert "prompt_caching" in models["sonnet"].capabilities
    assert "prompt_caching" not in models["llama"].capabilities
    assert models["llama-cached"].capabilities == frozenset({"tools", "prompt_caching"})
    assert models["sonnet-plain"].capabilities == frozenset({"tools"})


def test_a_negative_cache_price_is_a_config_problem(tmp_path: Path) -> None:
    text = """
        providers: [{name: demo, kind: demo}]
        models: [{name: demo, provider: demo, price: {input: 1, output: 2, cache_read: -1, cache_writes: 1}}]
        """
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), env={})
    assert "models[0].price.cache_read: must be at least 0" in str(raised.value)
    assert "cache_writes" in str(raised.value)


def check(messages: list[UncheckedMessage]) -> tuple[ChatMessage, ...]:
    return check_request(
        model="demo",
        known_models=["demo"],
        model_max_tokens=1000,
        messages=messages,
        params=SamplingParams(),
        max_content_bytes=10_000,
    )


def test_breakpoints_reach_the_checked_messages() -> None:
    checked = check([UncheckedMessage("user", "doc", cache=True, cache_ttl_s=300.0), UncheckedMessage("user", "q")])
    assert [m.cache for m in checked] == [True, False]


def test_a_ttl_other_than_five_minutes_or_an_hour_and_a_fifth_breakpoint_are_invalid() -> None:
    messages = [UncheckedMessage("user", f"m{i}", cache=True) for i in range(5)]
    messages[2] = UncheckedMessage("user", "m2", cache=True, cache_ttl_s=600.0)
    with pytest.raises(InvalidRequest) as raised:
        check(messages)
    assert raised.value.violations == (
        FieldViolation(
            "messages[2].cache_control.ttl", "must be 5m (300s), 1h (3600s) or unset (the provider's default)"
        ),
        FieldViolation("messages", "5 cache breakpoints; the limit is 4"),
    )


def test_one_hour_breakpoints_come_before_five_minute_ones() -> None:
    hour = UncheckedMessage("user", "doc", cache=True, cache_ttl_s=3600.0)
    five = UncheckedMessage("user", "more", cache=True, cache_ttl_s=300.0)
    default = UncheckedMessage("user", "q", cache=True)
    checked = check([hour, hour, five, default])
    assert [m.cache_ttl_s for m in checked] == [3600, 3600, 300, 0]
    for first in (five, default):
        with pytest.raises(InvalidRequest) as raised:
            check([first, hour])
        assert raised.value.violations == (
            FieldViolation("messages[1].cache_control.ttl", "a 1-hour breakpoint must come before every 5-minute one"),
        )


def test_cost_of_a_config_model_uses_its_cache_prices() -> None:
    model = ModelConfig(name="m", provider="p", price=Price(2.0, 8.0, 0.5, 2.5))
    usage = Usage(1_000_000, 0, 1_000_000, cached_prompt_tokens=500_000, cache_write_tokens=250_000)
    assert cost_of(model, Deployment("p", "m"), usage) == pytest.approx(0.25 * 2 + 0.5 * 0.5 + 0.25 * 2.5)
