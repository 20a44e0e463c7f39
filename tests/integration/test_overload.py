"""Load shedding: over a concurrency limit a call is refused at once with RESOURCE_EXHAUSTED and RetryInfo,
never queued; a provider over its own limit is skipped for another deployment."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.config import LimitsConfig, ModelConfig
from server.routing.catalog import Deployment
from tests.conftest import ENDLESS, GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.rpc import collect_stream, detail, error_info, request, rich_status, stub_for, unary_request

pytestmark = pytest.mark.asyncio

PROMPT = "hello brave world"


async def test_over_the_process_limit_calls_fail_fast_with_retry_info(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    config = openai_config(fake_openai.base_url, limits=LimitsConfig(max_concurrent_upstream=2, retry_after_s=0.25))
    gateway = await make_gateway(config)
    async with stub_for(gateway) as stub:
        fake_openai.hold()  # the two running calls hold their slots until the release below
        running = [stub.StreamGenerate(request("gpt-test", PROMPT), timeout=60) for _ in range(2)]
        await fake_openai.wait_for_requests(2)

        refused = await collect_stream(stub, request("gpt-test"))
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Generate(unary_request("gpt-test"), timeout=5)

        for error in (refused.error, unary.value):
            assert error is not None
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(error)
            assert (info.reason, info.metadata["limit"]) == ("GATEWAY_OVERLOADED", "process")
            retry = detail(rich_status(error), error_details_pb2.RetryInfo)
            assert retry is not None
            assert retry.retry_delay.ToMilliseconds() == 250
        assert refused.chunks == []
        assert len(fake_openai.requests) == 2  # the refused calls never reached the upstream

        fake_openai.release()
        for call in running:
            while isinstance(await call.read(), pb.StreamChunk):  # to the end (grpc.aio.EOF)
                pass
            assert await call.code() == grpc.StatusCode.OK
        assert (await collect_stream(stub, request("gpt-test"))).error is None  # slots are given back


async def test_a_provider_at_its_limit_is_skipped_for_another_deployment(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    config = openai_config(fake_openai.base_url)
    capped = replace(config.providers[1], max_concurrent_streams=1)
    other = replace(capped, name="other", max_concurrent_streams=0)
    spread = ModelConfig(
        name="spread", deployments=(Deployment("fake-openai", "gpt-test"), Deployment("other", "gpt-test", weight=0))
    )
    gateway = await make_gateway(
        replace(config, providers=(config.providers[0], capped, other), models=(*config.models, spread))
    )
    async with stub_for(gateway) as stub:
        running = stub.StreamGenerate(request(ENDLESS, PROMPT), timeout=60)  # holds the provider's one slot to the end
        assert isinstance(await running.read(), pb.StreamChunk)

        served = await collect_stream(stub, request("spread"))
        refused = await collect_stream(stub, request("gpt-test"))

    assert served.error is None
    assert (served.finals[0].provider, served.finals[0].deployment) == ("other", "other/gpt-test")
    assert refused.error is not None
    assert refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(refused.error)
    assert (info.reason, info.metadata["limit"], info.metadata["provider"]) == (
        "GATEWAY_OVERLOADED",
        "provider",
        "fake-openai",
    )
