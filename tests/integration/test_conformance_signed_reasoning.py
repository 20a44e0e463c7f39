"""The conformance table's rows for signed reasoning: a tool-call round trip with thinking, where the next
request must carry the model's signed reasoning back exactly as it came (Anthropic's thinking blocks with
their signatures, Gemini's thought signatures on their function calls), unary, streamed and in an
InteractiveStream conversation; and after a fallback, no provider's signature reaches another.

The fakes sign what their echo model thinks (tests/fakes/anthropic_upstream.py, gemini_upstream.py) and
check what comes back as the APIs do: Anthropic refuses a tool-result turn whose assistant message does not
start with its thinking block or carries an altered one; Gemini refuses a current-turn function call
without its signature (or Google's placeholder) or with a corrupted one. OpenAI shares no signatures, so
its rows show that the round trip works without them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import grpc
import pytest

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import TRANSPORTS, ModelConfig, ProviderConfig
from server.routing.catalog import DEFAULT_CAPABILITIES
from tests.conftest import UPSTREAM_KEY, GatewayFactory
from tests.fakes.anthropic_upstream import (
    REDACTED_TRIGGER,
    FakeAnthropicUpstream,
    redacted_data,
    thinking_signature,
)
from tests.fakes.gemini_upstream import FakeGeminiUpstream, thought_signature
from tests.integration.test_conformance import PRICE, Upstream, conformance_config, upstream
from tests.interactive import Bidi
from tests.rpc import collect_stream, error_info, stub_for

__all__ = ["upstream"]  # the fixture, imported for pytest

Code = grpc.StatusCode
PROMPT = "get_weather in Paris"
RESULT = "18 degrees and sunny"
THOUGHT = "Thinking about: get_weather in Paris"
ARGUMENTS = '{"text":"get_weather in Paris"}'
WEATHER = pb.Tool(
    name="get_weather",
    parameters=json.dumps({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
)
CONFIG = pb.GenerationConfig(tools=[WEATHER], reasoning=pb.ReasoningOptions(effort=pb.REASONING_EFFORT_LOW))


@pytest.fixture(params=TRANSPORTS)
async def gateway(make_gateway: GatewayFactory, upstream: Upstream, request: pytest.FixtureRequest) -> Gateway:
    """The conformance gateway plus `thinker`: the fakes' echo, able to reason and call tools."""
    config = conformance_config(upstream.kind, upstream.fake.base_url, request.param)
    thinker = ModelConfig(
        name="thinker",
        provider=upstream.provider,
        upstream_model="thinker",
        price=PRICE,
        capabilities=DEFAULT_CAPABILITIES | {"reasoning"},
    )
    return await make_gateway(replace(config, models=(*config.models, thinker)))


def expected_blocks(upstream: Upstream, call_id: str) -> list[pb.ReasoningBlock]:
    """What each provider signs of the echo's thinking before it calls get_weather."""
    if upstream.kind == "anthropic":
        return [pb.ReasoningBlock(text=THOUGHT, signature=thinking_signature(THOUGHT), provider=upstream.provider)]
    if upstream.kind == "gemini":
        key = f"get_weather:{json.dumps(json.loads(ARGUMENTS), separators=(',', ':'), sort_keys=True)}"
        return [pb.ReasoningBlock(signature=thought_signature(key), provider=upstream.provider, tool_call_id=call_id)]
    return []


def round_trip(call: pb.ToolCall, blocks: list[pb.ReasoningBlock]) -> list[pb.Message]:
    return [
        pb.Message(role="user", content=PROMPT),
        pb.Message(role="assistant", tool_calls=[call], reasoning_blocks=blocks),
        pb.Message(role="tool", tool_call_id=call.id, content=RESULT),
    ]


def assert_sent_back(upstream: Upstream, body: dict[str, Any], call_id: str) -> None:
    """The second request carried the signed reasoning exactly as the provider made it."""
    if upstream.kind == "anthropic":
        assert body["messages"][1]["content"] == [
            {"type": "thinking", "thinking": THOUGHT, "signature": thinking_signature(THOUGHT)},
            {"type": "tool_use", "id": call_id, "name": "get_weather", "input": json.loads(ARGUMENTS)},
        ]
    elif upstream.kind == "gemini":
        (block,) = expected_blocks(upstream, call_id)
        assert body["contents"][1]["parts"] == [
            {
                "functionCall": {"name": "get_weather", "args": json.loads(ARGUMENTS)},
                "thoughtSignature": block.signature,
            }
        ]
    else:
        assert "signature" not in json.dumps(body).lower()


async def test_a_unary_tool_round_trip_sends_the_signed_reasoning_back(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        first = await stub.Generate(
            pb.GenerateRequest(model="thinker", messages=[pb.Message(role="user", content=PROMPT)], config=CONFIG),
            timeout=30,
        )
        (call,) = first.tool_calls
        assert list(first.reasoning_blocks) == expected_blocks(upstream, call.id)
        assert first.reasoning == ""  # not asked for: the text channel stays empty, the blocks come all the same
        second = await stub.Generate(
            pb.GenerateRequest(model="thinker", messages=round_trip(call, list(first.reasoning_blocks)), config=CONFIG),
            timeout=30,
        )
        # Without the blocks, the providers that sign refuse the round trip, as their APIs do.
        bare = round_trip(call, [])
        refused = None
        try:
            await stub.Generate(pb.GenerateRequest(model="thinker", messages=bare, config=CONFIG), timeout=30)
        except grpc.aio.AioRpcError as error:
            refused = error

    assert (call.name, call.arguments) == ("get_weather", ARGUMENTS)
    assert (second.content, second.finish_reason) == (RESULT, pb.FINISH_REASON_STOP)
    assert_sent_back(upstream, upstream.fake.requests[1].body, call.id)
    if upstream.kind == "anthropic":
        assert refused is not None
        assert refused.code() == Code.INVALID_ARGUMENT
        assert error_info(refused).reason == "UPSTREAM_REJECTED_REQUEST"
    else:  # OpenAI signs nothing; Gemini takes Google's placeholder for a call it did not sign
        assert refused is None
        if upstream.kind == "gemini":
            part = upstream.fake.requests[2].body["contents"][1]["parts"][0]
            assert part["thoughtSignature"] == "skip_thought_signature_validator"


async def test_a_streamed_tool_round_trip_sends_the_signed_reasoning_back(gateway: Gateway, upstream: Upstream) -> None:
    messages = [pb.Message(role="user", content=PROMPT)]
    async with stub_for(gateway) as stub:
        first = await collect_stream(stub, pb.StreamGenerateRequest(model="thinker", messages=messages, config=CONFIG))
        pieces = [c.tool_call for c in first.chunks if c.HasField("tool_call")]
        call = pb.ToolCall(id=pieces[0].id, name=pieces[0].name, arguments="".join(p.arguments for p in pieces))
        (final,) = first.finals
        second = await collect_stream(
            stub,
            pb.StreamGenerateRequest(
                model="thinker", messages=round_trip(call, list(final.reasoning_blocks)), config=CONFIG
            ),
        )

    assert first.error is None
    assert second.error is None
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert list(final.reasoning_blocks) == expected_blocks(upstream, call.id)
    assert all(not c.reasoning_blocks for c in first.chunks if not c.is_complete), "on the final chunk only"
    assert "".join(second.deltas) == RESULT
    assert_sent_back(upstream, upstream.fake.requests[1].body, call.id)


async def test_a_conversation_sends_its_signed_reasoning_back_by_itself(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("thinker", config=CONFIG)
        await bidi.turn("1", PROMPT)
        first = (await bidi.until_end_of("1"))[-1].done
        (call,) = first.tool_calls
        await bidi.turn("2", messages=[pb.Message(role="tool", tool_call_id=call.id, content=RESULT)])
        second = await bidi.until_end_of("2")
        await bidi.finish()

    assert list(first.reasoning_blocks) == expected_blocks(upstream, call.id)
    assert second[-1].WhichOneof("kind") == "done", second[-1]
    assert "".join(r.delta.text for r in second if r.WhichOneof("kind") == "delta") == RESULT
    assert_sent_back(upstream, upstream.fake.requests[1].body, call.id)


async def test_a_redacted_thinking_block_goes_back_as_it_came(make_gateway: GatewayFactory) -> None:
    prompt = f"get_weather {REDACTED_TRIGGER}"
    async with FakeAnthropicUpstream(api_key=UPSTREAM_KEY) as fake:
        config = conformance_config("anthropic", fake.base_url)
        thinker = ModelConfig(
            name="thinker", provider="fake-anthropic", capabilities=DEFAULT_CAPABILITIES | {"reasoning"}
        )
        gateway = await make_gateway(replace(config, models=(*config.models, thinker)))
        async with stub_for(gateway) as stub:
            first = await stub.Generate(
                pb.GenerateRequest(model="thinker", messages=[pb.Message(role="user", content=prompt)], config=CONFIG),
                timeout=30,
            )
            (call,) = first.tool_calls
            messages = [
                pb.Message(role="user", content=prompt),
                pb.Message(role="assistant", tool_calls=[call], reasoning_blocks=first.reasoning_blocks),
                pb.Message(role="tool", tool_call_id=call.id, content=RESULT),
            ]
            second = await stub.Generate(
                pb.GenerateRequest(model="thinker", messages=messages, config=CONFIG), timeout=30
            )

        thought = f"Thinking about: {prompt}"
        assert [(b.text, b.signature, b.redacted) for b in first.reasoning_blocks] == [
            (thought, thinking_signature(thought), ""),
            ("", "", redacted_data(prompt)),
        ]
        assert second.content == RESULT
        assert fake.requests[1].body["messages"][1]["content"][:2] == [
            {"type": "thinking", "thinking": thought, "signature": thinking_signature(thought)},
            {"type": "redacted_thinking", "data": redacted_data(prompt)},
        ]


async def test_after_a_fallback_no_signature_reaches_another_provider(make_gateway: GatewayFactory) -> None:
    """Anthropic fails before the first token; the fallback (Gemini) gets the conversation without
    Anthropic's thinking block, and the call it did not sign carries Google's placeholder."""
    async with (
        FakeAnthropicUpstream(api_key=UPSTREAM_KEY) as anthropic,
        FakeGeminiUpstream(api_key=UPSTREAM_KEY) as gemini,
    ):
        base = conformance_config("anthropic", anthropic.base_url)
        second_provider = ProviderConfig(
            name="fake-gemini", kind="gemini", base_url=gemini.base_url, api_key_env="FAKE_KEY", api_key=UPSTREAM_KEY
        )
        caps = DEFAULT_CAPABILITIES | {"reasoning"}
        primary = ModelConfig(
            name="primary",
            provider="fake-anthropic",
            upstream_model="fault-503",
            capabilities=caps,
            fallbacks=("backup",),
        )
        backup = ModelConfig(name="backup", provider="fake-gemini", upstream_model="thinker", capabilities=caps)
        gateway = await make_gateway(
            replace(base, providers=(*base.providers, second_provider), models=(*base.models, primary, backup))
        )
        call = pb.ToolCall(id="toolu_01", name="get_weather", arguments=ARGUMENTS)
        block = pb.ReasoningBlock(text=THOUGHT, signature=thinking_signature(THOUGHT), provider="fake-anthropic")
        async with stub_for(gateway) as stub:
            response = await stub.Generate(
                pb.GenerateRequest(model="primary", messages=round_trip(call, [block]), config=CONFIG), timeout=30
            )

    assert (response.content, response.provider) == (RESULT, "fake-gemini")
    # The provider that made the block got it back; the other got none of it.
    assert anthropic.requests[0].body["messages"][1]["content"][0]["signature"] == block.signature
    sent = json.dumps(gemini.requests[0].body)
    assert block.signature not in sent
    assert THOUGHT not in sent
    part = gemini.requests[0].body["contents"][1]["parts"][0]
    assert part["thoughtSignature"] == "skip_thought_signature_validator"
    assert list(response.reasoning_blocks) == [
        pb.ReasoningBlock(signature=thought_signature(RESULT), provider="fake-gemini")
    ]


async def test_after_a_fallback_the_other_way_no_gemini_signature_reaches_anthropic(
    make_gateway: GatewayFactory,
) -> None:
    """Gemini fails before the first token; Anthropic (thinking off: with thinking on it would want a thinking
    block of its own before the tool call) gets the conversation without Gemini's signatures, which its
    fake would refuse as an altered thinking block."""
    async with (
        FakeAnthropicUpstream(api_key=UPSTREAM_KEY) as anthropic,
        FakeGeminiUpstream(api_key=UPSTREAM_KEY) as gemini,
    ):
        base = conformance_config("gemini", gemini.base_url)
        second_provider = ProviderConfig(
            name="fake-anthropic",
            kind="anthropic",
            base_url=anthropic.base_url,
            api_key_env="FAKE_KEY",
            api_key=UPSTREAM_KEY,
        )
        primary = ModelConfig(name="primary", provider="fake-gemini", upstream_model="fault-503", fallbacks=("backup",))
        backup = ModelConfig(name="backup", provider="fake-anthropic", upstream_model="echo")
        gateway = await make_gateway(
            replace(base, providers=(*base.providers, second_provider), models=(*base.models, primary, backup))
        )
        call = pb.ToolCall(id="call_0123456789abcdef01234567", name="get_weather", arguments=ARGUMENTS)
        blocks = [
            pb.ReasoningBlock(signature="U2lnbmVkQnlHZW1pbmk=", provider="fake-gemini", tool_call_id=call.id),
            pb.ReasoningBlock(signature="VGV4dFNpZ25hdHVyZQ==", provider="fake-gemini"),
        ]
        messages = round_trip(call, blocks)
        messages[1].content = "Checking."
        async with stub_for(gateway) as stub:
            response = await stub.Generate(
                pb.GenerateRequest(model="primary", messages=messages, config=pb.GenerationConfig(tools=[WEATHER])),
                timeout=30,
            )

    assert (response.content, response.provider) == (RESULT, "fake-anthropic")
    assert gemini.requests[0].body["contents"][1]["parts"][1]["thoughtSignature"] == blocks[0].signature
    assert anthropic.requests[0].body["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": json.loads(ARGUMENTS)},
    ]
