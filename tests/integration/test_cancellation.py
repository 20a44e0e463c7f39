"""A client that cancels or disconnects closes the upstream request at once, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.config import TRANSPORTS, GatewayConfig, TransportName
from tests.conftest import GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.rpc import request, stub_for, unary_request

pytestmark = pytest.mark.asyncio

# The bound on cancel -> upstream closed.
CLOSE_WITHIN_S = 0.1
WORDS = "one two three four five six seven eight"


def config_through(transport: TransportName, fake_openai: FakeOpenAIUpstream) -> GatewayConfig:
    """conftest's openai_config, its fake-openai provider calling through `transport`."""
    config = openai_config(fake_openai.base_url)
    providers = tuple(replace(p, transport=transport) if p.name == "fake-openai" else p for p in config.providers)
    return replace(config, providers=providers)


@pytest.fixture(params=TRANSPORTS)
async def openai_gateway(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, request: pytest.FixtureRequest
) -> Gateway:
    """conftest's openai_gateway, once per transport: both must close the upstream at once."""
    return await make_gateway(config_through(request.param, fake_openai))


async def test_cancelling_a_stream_closes_the_upstream_within_100_ms(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(openai_gateway) as stub:
        call = stub.StreamGenerate(request("fake-openai/slow-tokens-200", WORDS), timeout=10)
        first = await call.read()
        assert isinstance(first, pb.StreamChunk)
        cancelled = time.monotonic()
        call.cancel()
        disconnect = await fake_openai.wait_for_disconnect(timeout=1.0)

    assert disconnect.time - cancelled < CLOSE_WITHIN_S
    assert len(fake_openai.requests) == 1


async def test_cancelling_generate_closes_the_upstream_within_100_ms(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(openai_gateway) as stub:
        call = stub.Generate(unary_request("fake-openai/slow-first-token-2000"), timeout=10)
        await fake_openai.wait_for_requests(1, timeout=2.0)
        cancelled = time.monotonic()
        call.cancel()
        disconnect = await fake_openai.wait_for_disconnect(timeout=1.0)

    assert disconnect.time - cancelled < CLOSE_WITHIN_S


async def test_a_client_that_disconnects_before_the_first_token_closes_the_upstream(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{openai_gateway.port}")
    call = pb_grpc.AIServiceStub(channel).StreamGenerate(request("fake-openai/slow-first-token-2000"), timeout=10)
    await fake_openai.wait_for_requests(1, timeout=2.0)
    closed = time.monotonic()
    await channel.close()  # the connection goes away, not just the call

    disconnect = await fake_openai.wait_for_disconnect(timeout=1.0)
    assert disconnect.time - closed < CLOSE_WITHIN_S
    assert call.done()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc")
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_thousand_cancelled_streams_leave_no_task_socket_or_slot_behind(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, transport: TransportName
) -> None:
    openai_gateway = await make_gateway(config_through(transport, fake_openai))
    limits = openai_gateway.router.resilience.limits

    async def cancel_after_first_delta(stub: pb_grpc.AIServiceAsyncStub) -> None:
        call = stub.StreamGenerate(request("fake-openai/slow-tokens-100", WORDS), timeout=10)
        first = await call.read()
        assert isinstance(first, pb.StreamChunk)
        call.cancel()

    async def run(stub: pb_grpc.AIServiceAsyncStub, count: int, batch: int = 125) -> None:
        for _ in range(count // batch):
            await asyncio.gather(*(cancel_after_first_delta(stub) for _ in range(batch)))

    async with stub_for(openai_gateway) as stub:
        await run(stub, 125)  # warm up: channel, pools, gRPC's own threads and tasks

        def quiet() -> bool:
            return fake_openai.open_connections == 0 and limits.in_flight == 0

        await settle(quiet)
        baseline = (len(asyncio.all_tasks()), open_fds())

        started = time.monotonic()
        await run(stub, 1000)
        elapsed = time.monotonic() - started

        await settle(lambda: quiet() and (len(asyncio.all_tasks()), open_fds()) <= baseline)
        after = (len(asyncio.all_tasks()), open_fds())

    assert fake_openai.open_connections == 0
    assert limits.in_flight == 0
    assert after[0] <= baseline[0], f"asyncio tasks: {baseline[0]} before, {after[0]} after"
    assert after[1] <= baseline[1], f"open fds: {baseline[1]} before, {after[1]} after"
    assert len(fake_openai.disconnects) == 1125  # every upstream request was closed early
    assert elapsed < 10.0
