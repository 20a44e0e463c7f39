"""Load shedding: over the process's limit a call waits for a slot, fairly between clients and interactive
before batch, at most `limits.queue_wait_s`, then is refused with RESOURCE_EXHAUSTED and RetryInfo; a
provider over its own limit is skipped for another deployment."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.config import AuthConfig, ClientToken, GatewayConfig, LimitsConfig, ModelConfig
from server.routing.catalog import Deployment
from tests.conftest import ENDLESS, GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import eventually
from tests.rpc import collect_stream, detail, error_info, request, rich_status, stub_for, unary_request

pytestmark = pytest.mark.asyncio

PROMPT = "hello brave world"


async def test_with_no_queue_wait_over_the_process_limit_calls_fail_fast_with_retry_info(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    limits = LimitsConfig(max_concurrent_upstream=2, retry_after_s=0.25, queue_wait_s=0)
    config = openai_config(fake_openai.base_url, limits=limits)
    gateway = await make_gateway(config)
    async with stub_for(gateway) as stub:
        fake_openai.hold()  # the two running calls hold their slots until the release below
        running = [stub.StreamGenerate(request("gpt-test", PROMPT), timeout=60) for _ in range(2)]
        await fake_openai.wait_for_requests(2)

        refused = await collect_stream(stub, request("gpt-test"))
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Generate(unary_request("gpt-test"), timeout=30)

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


TEAM_TOKENS = {"flood": "flood-token-0123456789", "steady": "steady-token-0123456789"}


def two_teams(base_url: str, limits: LimitsConfig) -> GatewayConfig:
    tokens = tuple(ClientToken(name, hashlib.sha256(token.encode()).digest()) for name, token in TEAM_TOKENS.items())
    return openai_config(base_url, limits=limits, auth=AuthConfig(tokens=tokens))


def as_team(name: str, priority: str | None = None) -> tuple[tuple[str, str], ...]:
    auth = (("authorization", f"Bearer {TEAM_TOKENS[name]}"),)
    return (*auth, ("x-priority", priority)) if priority else auth


def prompts_in_order(fake: FakeOpenAIUpstream) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in fake.requests]


async def test_over_the_limit_a_call_waits_for_a_slot_and_a_flooding_client_cannot_starve_another(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway = await make_gateway(two_teams(fake_openai.base_url, LimitsConfig(max_concurrent_upstream=1)))
    assert gateway.queue is not None
    async with stub_for(gateway) as stub:
        fake_openai.hold()
        calls = [stub.Generate(unary_request("gpt-test", "flood 0"), metadata=as_team("flood"), timeout=60)]
        await fake_openai.wait_for_requests(1)  # it has the one slot
        for i in range(1, 4):
            calls.append(stub.Generate(unary_request("gpt-test", f"flood {i}"), metadata=as_team("flood"), timeout=60))
        await eventually(lambda: gateway.queue is not None and gateway.queue.queued == 3, "3 flood calls queued")
        calls.append(stub.Generate(unary_request("gpt-test", "steady"), metadata=as_team("steady"), timeout=60))
        await eventually(lambda: gateway.queue is not None and gateway.queue.queued == 4, "the steady call queued")
        fake_openai.release()
        replies = await asyncio.gather(*calls)

    assert all(reply.content for reply in replies)  # nobody was refused: each waited for its slot
    # The steady client's one call is served right after the flood's next one, not after all of them.
    assert prompts_in_order(fake_openai) == ["flood 0", "flood 1", "steady", "flood 2", "flood 3"]


async def test_interactive_calls_waiting_go_before_batch_ones(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway = await make_gateway(two_teams(fake_openai.base_url, LimitsConfig(max_concurrent_upstream=1)))
    async with stub_for(gateway) as stub:
        fake_openai.hold()
        running = stub.Generate(unary_request("gpt-test", "running"), metadata=as_team("flood", "batch"), timeout=60)
        await fake_openai.wait_for_requests(1)
        batch = [
            stub.Generate(unary_request("gpt-test", f"batch {i}"), metadata=as_team("flood", "batch"), timeout=60)
            for i in range(2)
        ]
        await eventually(lambda: gateway.queue is not None and gateway.queue.queued == 2, "2 batch calls queued")
        urgent = stub.Generate(unary_request("gpt-test", "interactive"), metadata=as_team("flood"), timeout=60)
        await eventually(lambda: gateway.queue is not None and gateway.queue.queued == 3, "the interactive call queued")
        fake_openai.release()
        await asyncio.gather(running, urgent, *batch)

    assert prompts_in_order(fake_openai) == ["running", "interactive", "batch 0", "batch 1"]


async def test_a_call_that_waits_longer_than_the_queue_allows_is_refused_and_never_reaches_the_upstream(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    limits = LimitsConfig(max_concurrent_upstream=1, queue_wait_s=0.2, retry_after_s=0.5)
    gateway = await make_gateway(openai_config(fake_openai.base_url, limits=limits))
    async with stub_for(gateway) as stub:
        fake_openai.hold()
        running = stub.StreamGenerate(request("gpt-test", PROMPT), timeout=60)
        await fake_openai.wait_for_requests(1)
        refused = await collect_stream(stub, request("gpt-test"), timeout=30)
        fake_openai.release()
        async for _ in running:
            pass

    assert refused.chunks == []
    assert refused.error is not None
    assert refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(refused.error)
    assert (info.reason, info.metadata["limit"]) == ("GATEWAY_OVERLOADED", "process")
    assert int(info.metadata["waited_ms"]) >= 200
    retry = detail(rich_status(refused.error), error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToMilliseconds() == 500
    assert len(fake_openai.requests) == 1


async def test_a_call_with_a_short_deadline_waits_only_until_just_before_it(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    limits = LimitsConfig(max_concurrent_upstream=1, queue_wait_s=600)
    gateway = await make_gateway(openai_config(fake_openai.base_url, limits=limits))
    async with stub_for(gateway) as stub:
        fake_openai.hold()
        running = stub.StreamGenerate(request("gpt-test", PROMPT), timeout=60)
        await fake_openai.wait_for_requests(1)
        refused = await collect_stream(stub, request("gpt-test"), timeout=10)
        fake_openai.release()
        async for _ in running:
            pass

    assert refused.error is not None
    # The gateway's own refusal, with details, before gRPC's bare DEADLINE_EXCEEDED.
    assert refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(refused.error).reason == "GATEWAY_OVERLOADED"
