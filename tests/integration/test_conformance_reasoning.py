"""The conformance table's rows for reasoning: the same client request gives the same client-visible shape
from OpenAI-compatible, Anthropic and Gemini upstreams (their byte-exact fakes), streamed and unary: the
reasoning text (where the provider shares it) on its own channel, before the reply's text and never in it;
the thinking counted in completion_tokens and priced; each provider's own setting on the wire.

The fakes' echo model thinks "Thinking about: <last user message>" when a request turns thinking on
(tests/fakes/http_server.py): Anthropic streams it as a thinking block, Gemini as thought parts (with
includeThoughts), OpenAI shares no reasoning text and only counts it (completion_tokens_details).
"""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import TRANSPORTS, ModelConfig, default_config
from server.routing.catalog import DEFAULT_CAPABILITIES
from server.types import Usage
from tests.conftest import GatewayFactory
from tests.integration.test_conformance import PRICE, Upstream, conformance_config, upstream
from tests.interactive import Bidi
from tests.rpc import collect_stream, detail, error_info, rich_status, stub_for

__all__ = ["upstream"]  # the fixture, imported for pytest

Code = grpc.StatusCode
PROMPT = "hello brave world"
THOUGHT = "Thinking about: hello brave world"  # five pieces
# What each provider shares of the thinking, and how many reasoning tokens it reports apart.
SHARES = {"openai": False, "anthropic": True, "gemini": True}
REPORTS = {"openai": 5, "anthropic": 0, "gemini": 5}


@pytest.fixture(params=TRANSPORTS)
async def gateway(make_gateway: GatewayFactory, upstream: Upstream, request: pytest.FixtureRequest) -> Gateway:
    """The conformance gateway plus `thinker`: the fakes' echo, able to reason."""
    config = conformance_config(upstream.kind, upstream.fake.base_url, request.param)
    thinker = ModelConfig(
        name="thinker",
        provider=upstream.provider,
        upstream_model="thinker",
        price=PRICE,
        capabilities=DEFAULT_CAPABILITIES | {"reasoning"},
    )
    return await make_gateway(replace(config, models=(*config.models, thinker)))


def reasoning(include: bool = True, **fields: object) -> pb.GenerationConfig:
    options = pb.ReasoningOptions(include_reasoning=include, **fields)  # type: ignore[arg-type]
    return pb.GenerationConfig(reasoning=options)


def stream_request(config: pb.GenerationConfig) -> pb.StreamGenerateRequest:
    return pb.StreamGenerateRequest(model="thinker", messages=[pb.Message(role="user", content=PROMPT)], config=config)


def unary(req: pb.StreamGenerateRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=req.model, messages=req.messages, config=req.config)


def assert_usage(usage: pb.Usage, kind: str) -> None:
    # The thinking is in completion_tokens for every provider (3 reply pieces + 5 thought pieces).
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 8, 11)
    assert usage.reasoning_tokens == REPORTS[kind]
    assert usage.cost_usd == pytest.approx(PRICE.cost(Usage(3, 8, 11)))


async def test_reasoning_streams_on_its_own_channel_before_the_text(gateway: Gateway, upstream: Upstream) -> None:
    req = stream_request(reasoning(effort=pb.REASONING_EFFORT_LOW))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)

    assert outcome.error is None
    thoughts = [c.reasoning for c in outcome.chunks if c.reasoning]
    assert all(not c.delta for c in outcome.chunks if c.reasoning), "a chunk carries one thing"
    assert "".join(outcome.deltas) == PROMPT
    if SHARES[upstream.kind]:
        assert "".join(thoughts) == THOUGHT
        last_thought = max(i for i, c in enumerate(outcome.chunks) if c.reasoning)
        first_text = min(i for i, c in enumerate(outcome.chunks) if c.delta)
        assert last_thought < first_text
    else:
        assert thoughts == []
    assert len(outcome.finals) == 1
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_STOP
    assert_usage(outcome.finals[0].usage, upstream.kind)

    # Each provider's own setting reached the upstream.
    body = upstream.fake.requests[0].body
    if upstream.kind == "openai":
        assert body["reasoning_effort"] == "low"
    elif upstream.kind == "anthropic":
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    else:
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}


async def test_generate_returns_the_reasoning_whole(gateway: Gateway, upstream: Upstream) -> None:
    req = unary(stream_request(reasoning(budget_tokens=2048)))
    async with stub_for(gateway) as stub:
        response = await stub.Generate(req, timeout=10)

    assert response.content == PROMPT
    assert response.reasoning == (THOUGHT if SHARES[upstream.kind] else "")
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert_usage(response.usage, upstream.kind)
    body = upstream.fake.requests[0].body
    if upstream.kind == "openai":
        assert body["reasoning_effort"] == "medium"  # OpenAI takes no budget: the nearest effort
    elif upstream.kind == "anthropic":
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    else:
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048, "includeThoughts": True}


async def test_reasoning_not_asked_for_is_counted_but_not_relayed(gateway: Gateway, upstream: Upstream) -> None:
    req = stream_request(reasoning(include=False, effort=pb.REASONING_EFFORT_HIGH))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)
        response = await stub.Generate(unary(req), timeout=10)

    assert outcome.error is None
    assert [c.reasoning for c in outcome.chunks if c.reasoning] == []
    assert "".join(outcome.deltas) == PROMPT
    assert_usage(outcome.finals[0].usage, upstream.kind)
    assert (response.content, response.reasoning) == (PROMPT, "")
    assert_usage(response.usage, upstream.kind)


async def test_a_budget_out_of_range_is_invalid_argument_before_any_upstream_call(
    gateway: Gateway, upstream: Upstream
) -> None:
    req = stream_request(reasoning(budget_tokens=0))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)

    assert outcome.chunks == []
    assert outcome.error is not None
    assert outcome.error.code() == Code.INVALID_ARGUMENT
    assert error_info(outcome.error).reason == "INVALID_REQUEST"
    bad = detail(rich_status(outcome.error), error_details_pb2.BadRequest)
    assert bad is not None
    assert [v.field for v in bad.field_violations] == ["config.reasoning.budget_tokens"]
    assert upstream.fake.requests == []


DEMO_THOUGHT = "The user wrote: hello brave world"


async def test_the_demo_reasons_on_request_streamed_unary_and_in_a_conversation(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(default_config(env={}, listen="127.0.0.1:0"))
    messages = [pb.Message(role="user", content=PROMPT)]
    config = reasoning(effort=pb.REASONING_EFFORT_MEDIUM)
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="demo", messages=messages, config=config))
        response = await stub.Generate(pb.GenerateRequest(model="demo", messages=messages, config=config), timeout=10)
        bidi = Bidi(stub)
        await bidi.start("demo", config=config)
        await bidi.turn("1", PROMPT)
        turn = await bidi.until_end_of("1")
        await bidi.turn("2", "again")  # the reasoning is not kept in the history
        second = await bidi.until_end_of("2")
        await bidi.finish()

    assert [c.reasoning for c in outcome.chunks if c.reasoning] == [
        "The",
        " user",
        " wrote:",
        " hello",
        " brave",
        " world",
    ]
    assert "".join(outcome.deltas) == PROMPT
    usage = outcome.finals[0].usage
    assert (usage.completion_tokens, usage.reasoning_tokens) == (9, 6)
    assert (response.content, response.reasoning, response.usage.reasoning_tokens) == (PROMPT, DEMO_THOUGHT, 6)
    deltas = [r.delta for r in turn if r.WhichOneof("kind") == "delta"]
    assert "".join(d.reasoning for d in deltas) == DEMO_THOUGHT
    assert "".join(d.text for d in deltas) == PROMPT
    assert all(not (d.reasoning and d.text) for d in deltas)
    assert turn[-1].done.usage.reasoning_tokens == 6
    # The second turn's prompt is the first turn's messages and reply (3 + 3) and its own (1): no reasoning.
    assert second[-1].done.usage.prompt_tokens == 7
