"""The catalog through a real gateway: aliases, provider/model names, weighted deployments, cost, ListModels."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

import grpc
import pytest

from generated import ai_service_pb2 as pb
from server.config import ProviderConfig
from server.routing.catalog import Deployment, ModelConfig, Price
from tests.conftest import GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.rpc import collect_stream, error_info, request, stub_for, unary_request


async def test_an_alias_a_tier_and_provider_slash_model_reach_the_same_upstream(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    config = openai_config(fake_openai.base_url)
    priced = ModelConfig(
        name="house-model", provider="fake-openai", upstream_model="gpt-test", aliases=("hm",), price=Price(8, 32)
    )
    gateway = await make_gateway(
        replace(config, models=(*config.models, priced), aliases=(("standard", "house-model"),))
    )
    async with stub_for(gateway) as stub:
        for name in ("house-model", "hm", "standard"):
            outcome = await collect_stream(stub, request(name, "one two three"))
            assert outcome.error is None
            [final] = outcome.finals
            assert (final.model, final.provider, final.deployment) == (
                "house-model",
                "fake-openai",
                "fake-openai/gpt-test",
            )
            # 3 prompt tokens at $8/M and 3 completion tokens at $32/M.
            assert final.usage.HasField("cost_usd")
            assert final.usage.cost_usd == pytest.approx((3 * 8 + 3 * 32) / 1_000_000)
        passthrough = await stub.Generate(unary_request("fake-openai/gpt-test", "x y"), timeout=30)
    assert passthrough.model == "fake-openai/gpt-test"
    assert not passthrough.usage.HasField("cost_usd")  # no price known for "gpt-test"
    assert [r.body["model"] for r in fake_openai.requests] == ["gpt-test"] * 4


async def test_weighted_deployments_split_1000_calls_by_weight(make_gateway: GatewayFactory) -> None:
    canary = ModelConfig(
        name="split",
        deployments=(
            Deployment("demo-main", "demo", weight=95),
            Deployment("demo-canary", "demo", weight=5, name="canary"),
        ),
    )
    config = replace(
        openai_config("http://127.0.0.1:9/v1"),
        providers=(ProviderConfig(name="demo-main", kind="demo"), ProviderConfig(name="demo-canary", kind="demo")),
        models=(canary,),
    )
    gateway = await make_gateway(config)
    async with stub_for(gateway) as stub:

        async def one() -> str:
            return (await stub.Generate(unary_request("split", "hi"), timeout=10)).deployment

        served = Counter(await asyncio.gather(*(one() for _ in range(1000))))
    assert set(served) == {"demo-main/demo", "canary"}
    assert 920 <= served["demo-main/demo"] <= 980, served


async def test_an_unknown_model_names_the_closest_known_names(make_gateway: GatewayFactory) -> None:
    config = openai_config("http://127.0.0.1:9/v1")
    gateway = await make_gateway(config)
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("gpt-tset"))
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(outcome.error)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["closest"].split(",")[0] == "gpt-test"
    assert "did you mean 'gpt-test'" in (outcome.error.details() or "")


async def test_list_models_shows_aliases_prices_deployments_and_fallbacks(make_gateway: GatewayFactory) -> None:
    model = ModelConfig(
        name="gpt",
        aliases=("g",),
        deployments=(Deployment("demo", "demo", weight=3), Deployment("other", "demo", weight=1)),
        price=Price(2.5, 10),
        fallbacks=("small",),
        max_tokens=4096,
    )
    config = replace(
        openai_config("http://127.0.0.1:9/v1"),
        providers=(ProviderConfig(name="demo", kind="demo"), ProviderConfig(name="other", kind="demo")),
        models=(model, ModelConfig(name="small", provider="other")),
        aliases=(("advanced", "gpt"),),
    )
    gateway = await make_gateway(config)
    async with stub_for(gateway) as stub:
        reply = await stub.ListModels(pb.ListModelsRequest(), timeout=30)
    by_name = {m.name: m for m in reply.models}
    assert list(by_name) == ["gpt", "small"]
    gpt = by_name["gpt"]
    assert list(gpt.aliases) == ["advanced", "g"]
    assert (gpt.provider, gpt.max_output_tokens, list(gpt.fallbacks)) == ("demo", 4096, ["small"])
    assert (gpt.input_price_per_million, gpt.output_price_per_million) == (2.5, 10.0)
    assert [(d.name, d.provider, d.weight) for d in gpt.deployments] == [
        ("demo/demo", "demo", 3.0),
        ("other/demo", "other", 1.0),
    ]
    assert not by_name["small"].HasField("input_price_per_million")
