"""The health service of a real gateway: a status per catalog model, NOT_FOUND for other names, request ids
on health checks and ListModels, and NOT_SERVING everywhere on shutdown."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import ModelConfig
from tests.conftest import GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import health_check, health_watch
from tests.rpc import error_info, stub_for

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = HealthCheckResponse.SERVICE_UNKNOWN
TIMEOUT_S = 30.0  # against a hang only


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    config = openai_config(fake_openai.base_url)
    models = (*config.models, ModelConfig(name="aliased", provider="demo", upstream_model="demo", aliases=("nick",)))
    return await make_gateway(openai_config(fake_openai.base_url, models=models))


def channel_to(gateway: Gateway) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")


def trailer(call_metadata: object, key: str) -> list[str]:
    return [str(v) for k, v in call_metadata or () if k == key]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "service", ["", "holysheepai.AIService", "holysheepai.AIService/demo", "holysheepai.AIService/nick"]
)
async def test_the_server_the_service_each_model_and_alias_serve(gateway: Gateway, service: str) -> None:
    async with channel_to(gateway) as channel:
        reply = await health_check(channel)(HealthCheckRequest(service=service), timeout=TIMEOUT_S)
    assert reply.status == SERVING


@pytest.mark.parametrize(
    "service", ["holysheepai.AIService/no-such-model", "holysheepai.AIService/fake-openai/anything", "x\n"]
)
async def test_another_name_is_not_found_with_its_reason_and_the_request_id(gateway: Gateway, service: str) -> None:
    async with channel_to(gateway) as channel:
        call = health_check(channel)(
            HealthCheckRequest(service=service), metadata=(("x-request-id", "probe-7"),), timeout=TIMEOUT_S
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    error = caught.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert info.reason == "SERVICE_NOT_FOUND"
    assert info.metadata["request_id"] == "probe-7"
    assert "\n" not in info.metadata["service"]
    assert trailer(error.trailing_metadata(), "x-request-id") == ["probe-7"]
    assert trailer(error.initial_metadata(), "x-request-id") == ["probe-7"]


async def test_a_check_returns_the_callers_request_id_or_a_new_one(gateway: Gateway) -> None:
    async with channel_to(gateway) as channel:
        mine = health_check(channel)(HealthCheckRequest(), metadata=(("x-request-id", "lb-1"),), timeout=TIMEOUT_S)
        await mine
        theirs = health_check(channel)(HealthCheckRequest(), timeout=TIMEOUT_S)
        await theirs
        assert trailer(await mine.trailing_metadata(), "x-request-id") == ["lb-1"]
        generated = trailer(await theirs.trailing_metadata(), "x-request-id")
    assert len(generated) == 1
    assert len(generated[0]) == 36


async def test_list_models_returns_the_request_id(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        call = stub.ListModels(pb.ListModelsRequest(), metadata=(("x-request-id", "catalog-1"),), timeout=TIMEOUT_S)
        reply = await call
        assert trailer(await call.trailing_metadata(), "x-request-id") == ["catalog-1"]
        bad = stub.ListModels(pb.ListModelsRequest(), metadata=(("x-request-id", "bad id"),), timeout=TIMEOUT_S)
        await bad
        replaced = trailer(await bad.trailing_metadata(), "x-request-id")
    assert "demo" in [m.name for m in reply.models]
    assert len(replaced) == 1
    assert replaced != ["bad id"]


async def test_a_watch_names_its_request_id_at_once_and_sees_the_shutdown(gateway: Gateway) -> None:
    async with channel_to(gateway) as channel:
        call = health_watch(channel)(
            HealthCheckRequest(service="holysheepai.AIService/demo"),
            metadata=(("x-request-id", "watch-1"),),
            timeout=TIMEOUT_S,
        )
        assert trailer(await call.initial_metadata(), "x-request-id") == ["watch-1"]
        replies = aiter(call)
        assert (await anext(replies)).status == SERVING
        stopping = asyncio.create_task(gateway.stop(1.0))
        assert (await anext(replies)).status == NOT_SERVING
        await stopping


async def test_a_watch_of_an_unknown_name_says_so_and_stores_nothing(gateway: Gateway) -> None:
    async with channel_to(gateway) as channel:
        call = health_watch(channel)(HealthCheckRequest(service="holysheepai.AIService/nope"), timeout=TIMEOUT_S)
        assert (await anext(aiter(call))).status == SERVICE_UNKNOWN
        assert gateway.health.status("holysheepai.AIService/nope") is None
        call.cancel()


async def test_a_check_during_shutdown_is_not_serving_for_every_name(gateway: Gateway) -> None:
    gateway.health.enter_graceful_shutdown()
    async with channel_to(gateway) as channel:
        for service in ("", "holysheepai.AIService", "holysheepai.AIService/gpt-test"):
            reply = await health_check(channel)(HealthCheckRequest(service=service), timeout=TIMEOUT_S)
            assert reply.status == NOT_SERVING, service
