"""The conformance table's rows for prompt caching: the same client request gives the same usage (cached
prompt tokens within the prompt tokens) and the same cost at the cache prices from OpenAI-compatible,
Anthropic and Gemini upstreams (their byte-exact fakes), streamed and unary; a cache breakpoint reaches
Anthropic on the right block and its cache writes are counted and priced; a model without the capability
is refused before any upstream call; a breakpoint the gateway cannot price is INVALID_ARGUMENT.

The fakes' `cached-N` model reports N prompt tokens read from the cache, each in its own field
(`prompt_tokens_details.cached_tokens`, `cache_read_input_tokens`, `cachedContentTokenCount`); the
Anthropic fake also reports the rest of the prompt up to the last breakpoint as written.
"""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import TRANSPORTS, ModelConfig, default_config
from server.routing.catalog import DEFAULT_CAPABILITIES, Price
from tests.conftest import GatewayFactory
from tests.integration.test_conformance import Upstream, conformance_config, upstream
from tests.rpc import collect_stream, detail, error_info, rich_status, stub_for

__all__ = ["upstream"]  # the fixture, imported for pytest

Code = grpc.StatusCode
CACHED_PRICE = Price(
    input_per_million=2.0,
    output_per_million=8.0,
    cache_read_per_million=0.5,
    cache_write_per_million=2.5,
    cache_write_1h_per_million=4.0,
)
PROMPT = "one two three four five six"  # six prompt tokens in every fake


@pytest.fixture(params=TRANSPORTS)
async def gateway(make_gateway: GatewayFactory, upstream: Upstream, request: pytest.FixtureRequest) -> Gateway:
    """The conformance gateway plus `cached-4` and `cached-1` (priced with cache prices, able to cache) and
    `cached-4-plain` (the same upstream model, without the capability)."""
    config = conformance_config(upstream.kind, upstream.fake.base_url, request.param)
    caching = ModelConfig(
        name="cached-4",
        provider=upstream.provider,
        upstream_model="cached-4",
        price=CACHED_PRICE,
        capabilities=DEFAULT_CAPABILITIES | {"prompt_caching"},
    )
    plain = ModelConfig(name="cached-4-plain", provider=upstream.provider, upstream_model="cached-4")
    one = replace(caching, name="cached-1", upstream_model="cached-1")
    return await make_gateway(replace(config, models=(*config.models, caching, plain, one)))


def cost(prompt: int, completion: int, cached: int, written: int) -> float:
    fresh = prompt - cached - written
    return (fresh * 2.0 + cached * 0.5 + written * 2.5 + completion * 8.0) / 1_000_000


def assert_usage(usage: pb.Usage, prompt: int, completion: int, cached: int, written: int) -> None:
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        prompt,
        completion,
        prompt + completion,
    )
    assert (usage.cached_prompt_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (cached, written, 0)
    assert not usage.unreported
    assert usage.cost_usd == pytest.approx(cost(prompt, completion, cached, written))


async def test_cached_prompt_tokens_are_reported_and_priced_alike_streamed_and_unary(gateway: Gateway) -> None:
    messages = [pb.Message(role="user", content=PROMPT)]
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="cached-4", messages=messages))
        response = await stub.Generate(pb.GenerateRequest(model="cached-4", messages=messages), timeout=10)

    assert outcome.error is None
    assert "".join(outcome.deltas) == PROMPT
    assert len(outcome.finals) == 1
    assert_usage(outcome.finals[0].usage, 6, 6, 4, 0)
    assert response.content == PROMPT
    assert_usage(response.usage, 6, 6, 4, 0)
    # Cheaper than the same call priced as if nothing were cached.
    assert response.usage.cost_usd < cost(6, 6, 0, 0)


async def test_a_breakpoint_reaches_anthropic_on_its_message_and_writes_are_priced(
    gateway: Gateway, upstream: Upstream
) -> None:
    messages = [
        pb.Message(role="system", content="you answer briefly", cache_control=pb.CacheControl()),
        pb.Message(
            role="user", content="the long shared document", cache_control=pb.CacheControl(ttl=Duration(seconds=300))
        ),
        pb.Message(role="assistant", content="ok"),
        pb.Message(role="user", content="question"),
    ]  # 3 + 4 + 1 + 1 = 9 prompt tokens, 7 of them up to the last breakpoint
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="cached-4", messages=messages))
        response = await stub.Generate(pb.GenerateRequest(model="cached-4", messages=messages), timeout=10)

    assert outcome.error is None
    assert outcome.deltas == ["question"]
    # Anthropic writes the rest of the prefix up to the breakpoint; OpenAI and Gemini cache by themselves
    # and report no writes.
    written = 3 if upstream.kind == "anthropic" else 0
    assert_usage(outcome.finals[0].usage, 9, 1, 4, written)
    assert_usage(response.usage, 9, 1, 4, written)

    body = upstream.fake.requests[0].body
    if upstream.kind == "anthropic":
        assert body["system"] == [
            {"type": "text", "text": "you answer briefly", "cache_control": {"type": "ephemeral"}}
        ]
        assert body["messages"] == [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "the long shared document", "cache_control": {"type": "ephemeral"}}
                ],
            },
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "question"},
        ]
    else:
        assert "cache_control" not in str(body)


async def test_a_model_without_prompt_caching_is_refused_before_any_upstream_call(
    gateway: Gateway, upstream: Upstream
) -> None:
    messages = [pb.Message(role="user", content=PROMPT, cache_control=pb.CacheControl())]
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="cached-4-plain", messages=messages))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(pb.GenerateRequest(model="cached-4-plain", messages=messages), timeout=10)

    assert outcome.chunks == []
    for error in (outcome.error, raised.value):
        assert error is not None
        assert error.code() == Code.FAILED_PRECONDITION
        info = error_info(error)
        assert info.reason == "CAPABILITY_UNSUPPORTED"
        assert (info.metadata["capability"], info.metadata["model"]) == ("prompt_caching", "cached-4-plain")
    assert upstream.fake.requests == []


async def test_one_hour_writes_reach_anthropic_and_are_priced_exactly(gateway: Gateway, upstream: Upstream) -> None:
    hour, five = pb.CacheControl(ttl=Duration(seconds=3600)), pb.CacheControl(ttl=Duration(seconds=300))
    messages = [
        pb.Message(role="system", content="you answer briefly", cache_control=hour),
        pb.Message(role="user", content="the long shared document", cache_control=five),
        pb.Message(role="assistant", content="ok"),
        pb.Message(role="user", content="question"),
    ]  # 9 prompt tokens: 1 read from the cache; 3 up to the 1-hour breakpoint, 7 up to the last one
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="cached-1", messages=messages))
        response = await stub.Generate(pb.GenerateRequest(model="cached-1", messages=messages), timeout=10)

    assert outcome.error is None
    for usage in (outcome.finals[0].usage, response.usage):
        if upstream.kind == "anthropic":
            # Written: 2 with the 1-hour TTL (after the token read), 4 more with 5 minutes; 2 fresh, 1 output.
            assert (usage.prompt_tokens, usage.cached_prompt_tokens) == (9, 1)
            assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (6, 2)
            assert usage.cost_usd == pytest.approx((2 * 2.0 + 1 * 0.5 + 4 * 2.5 + 2 * 4.0 + 1 * 8.0) / 1e6, rel=1e-12)
        else:  # OpenAI and Gemini cache by themselves: the TTL is not sent, and nothing is written
            assert (usage.cached_prompt_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (1, 0, 0)
            assert usage.cost_usd == pytest.approx((8 * 2.0 + 1 * 0.5 + 1 * 8.0) / 1e6, rel=1e-12)
    body = upstream.fake.requests[0].body
    if upstream.kind == "anthropic":
        assert body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    else:
        assert "cache_control" not in str(body)
        assert "ttl" not in str(body)


async def test_a_ttl_out_of_order_or_unknown_and_a_fifth_breakpoint_are_invalid_argument(
    gateway: Gateway, upstream: Upstream
) -> None:
    messages = [pb.Message(role="user", content=f"part {i}", cache_control=pb.CacheControl()) for i in range(5)]
    messages[1].cache_control.ttl.seconds = 3600  # after a 5-minute (default) one
    messages[2].cache_control.ttl.seconds = 600
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="cached-4", messages=messages))

    assert outcome.chunks == []
    assert outcome.error is not None
    assert outcome.error.code() == Code.INVALID_ARGUMENT
    assert error_info(outcome.error).reason == "INVALID_REQUEST"
    bad = detail(rich_status(outcome.error), error_details_pb2.BadRequest)
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("messages[1].cache_control.ttl", "a 1-hour breakpoint must come before every 5-minute one"),
        ("messages[2].cache_control.ttl", "must be 5m (300s), 1h (3600s) or unset (the provider's default)"),
        ("messages", "5 cache breakpoints; the limit is 4"),
    ]
    assert upstream.fake.requests == []


async def test_the_demo_reports_the_prompt_up_to_its_last_breakpoint_as_cached(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(default_config(env={}, listen="127.0.0.1:0"))
    messages = [
        pb.Message(role="system", content="be brief", cache_control=pb.CacheControl()),
        pb.Message(role="user", content="hello brave world"),
    ]
    async with stub_for(gateway) as stub:
        response = await stub.Generate(pb.GenerateRequest(model="demo", messages=messages), timeout=10)
        listing = await stub.ListModels(pb.ListModelsRequest(), timeout=10)

    assert response.content == "hello brave world"
    usage = response.usage
    assert (usage.prompt_tokens, usage.cached_prompt_tokens, usage.cache_write_tokens) == (5, 2, 0)
    assert "prompt_caching" in listing.models[0].capabilities
