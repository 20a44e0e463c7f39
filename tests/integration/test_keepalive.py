"""HTTP/2 keepalive: the server's ping policy accepts clients that ping as often as configured, idle or not,
and the connection-age options reach the server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from server.app import keepalive_options, server_options
from server.config import KeepaliveConfig
from tests.conftest import GatewayFactory, openai_config
from tests.rpc import collect_stream, request

# A client that pings every 200 ms, with or without calls in flight.
EAGER_CLIENT = (
    ("grpc.keepalive_time_ms", 200),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def test_the_server_options_carry_the_keepalive_policy() -> None:
    options = dict(server_options(openai_config("http://127.0.0.1:9/v1")))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 5_000
    assert "grpc.max_connection_age_ms" not in options  # off unless configured


def test_connection_age_is_an_option() -> None:
    options = dict(keepalive_options(KeepaliveConfig(max_connection_age_s=300, max_connection_age_grace_s=600)))
    assert (options["grpc.max_connection_age_ms"], options["grpc.max_connection_age_grace_ms"]) == (300_000, 600_000)


async def states_over(channel: grpc.aio.Channel, seconds: float) -> list[grpc.ChannelConnectivity]:
    """The channel's connectivity states over `seconds`, until it leaves READY."""
    states = [channel.get_state()]
    deadline = time.monotonic() + seconds
    while states[-1] == grpc.ChannelConnectivity.READY and (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(channel.wait_for_state_change(states[-1]), left)
        except TimeoutError:
            break
        states.append(channel.get_state())
    return states


async def idle_states(
    make_gateway: GatewayFactory, min_interval_s: float, watch_s: float
) -> list[grpc.ChannelConnectivity]:
    """An eager client makes one call, then idles: its channel's states over the next `watch_s`, until it
    leaves READY."""
    keepalive = KeepaliveConfig(min_client_ping_interval_s=min_interval_s)
    gateway = await make_gateway(openai_config("http://127.0.0.1:9/v1", keepalive=keepalive))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}", options=EAGER_CLIENT) as channel:
        assert (await collect_stream(pb_grpc.AIServiceStub(channel), request("demo"))).error is None
        # gRPC clients send keepalive pings at most once a second; the third early one is a GOAWAY.
        return await states_over(channel, watch_s)


@pytest.mark.slow
async def test_an_idle_pinging_client_keeps_its_connection_when_the_policy_permits_its_pings(
    make_gateway: GatewayFactory,
) -> None:
    # That a connection stays can only be watched over a window (4 s: a few pings); that one is dropped is
    # an event, waited for with room for a loaded machine.
    permitted, too_eager = await asyncio.gather(
        idle_states(make_gateway, 0.5, watch_s=4.0), idle_states(make_gateway, 5.0, watch_s=60.0)
    )

    assert permitted == [grpc.ChannelConnectivity.READY]
    # Pinging more often than the policy allows: GOAWAY too_many_pings, and the channel drops to IDLE.
    assert too_eager[0] == grpc.ChannelConnectivity.READY
    assert too_eager[-1] != grpc.ChannelConnectivity.READY
