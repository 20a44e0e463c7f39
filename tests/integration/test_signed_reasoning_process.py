"""Through a real `python -m server` process, configured from YAML: a tool round trip with Anthropic's
extended thinking carries the signed thinking block back (the fake refuses it otherwise), and a call with a
1-hour cache breakpoint costs exactly what the config's `cache_write_1h` price says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from tests.fakes.anthropic_upstream import FakeAnthropicUpstream, thinking_signature
from tests.process import run_gateway

pytestmark = pytest.mark.slow  # starts `python -m server`

KEY = "sk-ant-fake-0123456789abcdef"
WEATHER = pb.Tool(name="get_weather", parameters='{"type":"object","properties":{"text":{"type":"string"}}}')
THINKING = pb.GenerationConfig(tools=[WEATHER], reasoning=pb.ReasoningOptions(budget_tokens=1024))


def write_config(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "providers:\n"
        f"  - {{name: claude, kind: anthropic, base_url: '{base_url}', api_key_env: ANTHROPIC_KEY}}\n"
        "models:\n"
        "  - name: thinker\n"
        "    provider: claude\n"
        "    capabilities: [tools, reasoning]\n"
        "  - name: cached\n"
        "    provider: claude\n"
        "    upstream_model: cached-1\n"
        "    price: {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75, cache_write_1h: 6}\n"
    )
    return path


@asynccontextmanager
async def gateway_stub(tmp_path: Path, base_url: str) -> AsyncIterator[pb_grpc.AIServiceAsyncStub]:
    async with run_gateway("--config", str(write_config(tmp_path, base_url)), env={"ANTHROPIC_KEY": KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            yield pb_grpc.AIServiceStub(channel)


async def test_a_thinking_tool_round_trip_and_a_one_hour_write_through_a_process(tmp_path: Path) -> None:
    prompt = "get_weather in Oslo"
    thought = f"Thinking about: {prompt}"
    async with FakeAnthropicUpstream(api_key=KEY) as fake, gateway_stub(tmp_path, fake.base_url) as stub:
        first = await stub.Generate(
            pb.GenerateRequest(model="thinker", messages=[pb.Message(role="user", content=prompt)], config=THINKING),
            timeout=30,
        )
        (call,) = first.tool_calls
        messages = [
            pb.Message(role="user", content=prompt),
            pb.Message(role="assistant", tool_calls=[call], reasoning_blocks=first.reasoning_blocks),
            pb.Message(role="tool", tool_call_id=call.id, content="cold"),
        ]
        second = await stub.Generate(
            pb.GenerateRequest(model="thinker", messages=messages, config=THINKING), timeout=30
        )
        cached = await stub.Generate(
            pb.GenerateRequest(
                model="cached",
                messages=[
                    pb.Message(
                        role="system", content="a b c", cache_control=pb.CacheControl(ttl=Duration(seconds=3600))
                    ),
                    pb.Message(role="user", content="question"),
                ],
            ),
            timeout=30,
        )

    assert list(first.reasoning_blocks) == [
        pb.ReasoningBlock(text=thought, signature=thinking_signature(thought), provider="claude")
    ]
    assert second.content == "cold"
    assert fake.requests[1].body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": thought, "signature": thinking_signature(thought)},
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": json.loads(call.arguments)},
    ]
    # 4 prompt tokens: 1 read, 2 written for an hour (the rest of "a b c"), 1 fresh; 1 output token.
    usage = cached.usage
    assert (usage.prompt_tokens, usage.cached_prompt_tokens, usage.cache_write_tokens) == (4, 1, 2)
    assert usage.cache_write_1h_tokens == 2
    assert usage.cost_usd == pytest.approx((1 * 3 + 1 * 0.3 + 2 * 6 + 1 * 15) / 1e6, rel=1e-12)
