"""A client that cancels or disconnects closes the upstream request, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.config import TRANSPORTS, GatewayConfig, MetricsConfig, TransportName
from tests.conftest import GatewayFactory, openai_config
from tests.fakes.http_server import WAIT_TIMEOUT_S
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.metrics import Scrape
from tests.rpc import request, stub_for, unary_request

pytestmark = pytest.mark.asyncio

# Upstream models that never finish by themselves while a test waits: a disconnect the fake upstream sees
# can only come from the client's cancel. (How soon it comes is a latency figure, not a test: the waits
# below end on the disconnect itself, and their timeout only keeps a broken gateway from hanging the suite;
# it is below the gateway's 60 s stream idle timeout, so that timer can never be what closed the upstream.)
ENDLESS_STREAM = "fake-openai/slow-tokens-3600000"  # the first word, then an hour until the next
ENDLESS_FIRST_TOKEN = "fake-openai/slow-first-token-3600000"
WORDS = "one two three four five six seven eight"
SAFETY_S = WAIT_TIMEOUT_S


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


async def test_cancelling_a_stream_closes_the_upstream(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(openai_gateway) as stub:
        call = stub.StreamGenerate(request(ENDLESS_STREAM, WORDS))
        first = await call.read()
        assert isinstance(first, pb.StreamChunk)
        assert fake_openai.disconnects == []
        call.cancel()
        disconnect = await fake_openai.wait_for_disconnect(timeout=SAFETY_S)

    assert disconnect.model == "slow-tokens-3600000"
    assert call.cancelled()
    assert len(fake_openai.requests) == 1


async def test_cancelling_generate_closes_the_upstream(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(openai_gateway) as stub:
        call = stub.Generate(unary_request(ENDLESS_FIRST_TOKEN))
        await fake_openai.wait_for_requests(1, timeout=SAFETY_S)
        assert fake_openai.disconnects == []
        call.cancel()
        disconnect = await fake_openai.wait_for_disconnect(timeout=SAFETY_S)

    assert disconnect.model == "slow-first-token-3600000"
    assert call.cancelled()
    assert len(fake_openai.requests) == 1


async def test_a_client_that_disconnects_before_the_first_token_closes_the_upstream(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{openai_gateway.port}")
    call = pb_grpc.AIServiceStub(channel).StreamGenerate(request(ENDLESS_FIRST_TOKEN))
    await fake_openai.wait_for_requests(1, timeout=SAFETY_S)
    assert fake_openai.disconnects == []
    await channel.close()  # the connection goes away, not just the call

    disconnect = await fake_openai.wait_for_disconnect(timeout=SAFETY_S)
    assert disconnect.model == "slow-first-token-3600000"
    assert call.done()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(predicate: Callable[[], bool], timeout: float = SAFETY_S) -> None:
    """Wait until `predicate` holds: re-checked as the gateway works (the timeout only prevents a hang; the
    assertions after it say what did not settle)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate() and loop.time() < deadline:
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc")
@pytest.mark.parametrize(
    ("transport", "metrics"),
    # Each transport with metrics off, and the default one again with metrics on: the metrics' interceptor
    # and record observer must leave nothing behind either, and count every cancelled call.
    [*((transport, False) for transport in TRANSPORTS), (TRANSPORTS[0], True)],
    ids=[*(f"{transport}-metrics-off" for transport in TRANSPORTS), f"{TRANSPORTS[0]}-metrics-on"],
)
async def test_a_thousand_cancelled_streams_leave_no_task_socket_or_slot_behind(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, transport: TransportName, metrics: bool
) -> None:
    config = config_through(transport, fake_openai)
    on = MetricsConfig(listen="127.0.0.1:0") if metrics else MetricsConfig()
    openai_gateway = await make_gateway(replace(config, metrics=on))
    limits = openai_gateway.router.resilience.limits

    async def cancel_after_first_delta(stub: pb_grpc.AIServiceAsyncStub) -> None:
        call = stub.StreamGenerate(request(ENDLESS_STREAM, WORDS), timeout=SAFETY_S)
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

        await run(stub, 1000)

        def released() -> bool:
            return quiet() and len(asyncio.all_tasks()) <= baseline[0] and open_fds() <= baseline[1]

        await settle(released)
        after = (len(asyncio.all_tasks()), open_fds())

    assert fake_openai.open_connections == 0
    assert limits.in_flight == 0
    assert after[0] <= baseline[0], f"asyncio tasks: {baseline[0]} before, {after[0]} after"
    assert after[1] <= baseline[1], f"open fds: {baseline[1]} before, {after[1]} after"
    assert len(fake_openai.disconnects) == 1125  # every upstream request was closed early
    if metrics:  # the metrics saw every cancelled call end, and none is left in flight
        scrape = await Scrape.of(openai_gateway)
        assert scrape.value("grpc_server_handled_total", grpc_method="StreamGenerate", grpc_code="Canceled") == 1125
        assert scrape.value("gateway_calls_total", grpc_method="StreamGenerate", code="CANCELLED") == 1125
        assert scrape.value("gateway_calls_in_flight") == 0
