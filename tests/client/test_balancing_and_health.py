"""Client-side load balancing over several gateways (`load_balancing="round_robin"`, as over a headless DNS
name), the client's keepalive pings, and the health check that container images run (`python -m client
health`)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from client import AIClient, AsyncAIClient, ConfigurationError
from client.__main__ import main
from client.channel import ConnectionSettings, is_loopback_target
from client.errors import GatewayError
from server.app import Gateway
from tests.conftest import GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream


def settings(**options: object) -> ConnectionSettings:
    arguments: dict[str, object] = {
        "target": "127.0.0.1:1", "token": None, "ca_file": None, "plaintext": True, "timeout": 5.0, "options": None,
    }  # fmt: skip
    return ConnectionSettings.resolve(**{**arguments, **options}, env={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("ipv4:127.0.0.1:50051,127.0.0.1:50052", True),
        ("ipv4:127.0.0.1:50051,127.0.0.2:50052", True),
        ("ipv4:127.0.0.1:50051,10.0.0.7:50052", False),
        ("ipv6:[::1]:50051,[::1]:50052", True),
        ("ipv6:[::1]:50051,[2001:db8::1]:50052", False),
    ],
)
def test_an_address_list_is_loopback_only_when_every_address_is(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def test_round_robin_becomes_the_channels_policy_and_an_unknown_policy_is_refused() -> None:
    assert ("grpc.lb_policy_name", "round_robin") in settings(load_balancing="round_robin").options
    assert all(key != "grpc.lb_policy_name" for key, _ in settings().options)  # gRPC's own default
    with pytest.raises(ConfigurationError, match=r"load_balancing must be one of pick_first, round_robin, not 'rr'"):
        settings(load_balancing="rr")


def test_the_client_pings_every_30_s_unless_the_caller_chose_otherwise() -> None:
    options = dict(settings().options)
    assert (options["grpc.keepalive_time_ms"], options["grpc.keepalive_timeout_ms"]) == (30_000, 10_000)
    mine = dict(settings(options=[("grpc.keepalive_time_ms", 7_000)]).options)
    assert (mine["grpc.keepalive_time_ms"], mine["grpc.keepalive_timeout_ms"]) == (7_000, 10_000)


async def two_gateways(make_gateway: GatewayFactory) -> tuple[list[FakeOpenAIUpstream], str]:
    """Two gateways, each in front of its own fake upstream; the address list of both."""
    upstreams = [FakeOpenAIUpstream(), FakeOpenAIUpstream()]
    for upstream in upstreams:
        await upstream.start()
    gateways = [await make_gateway(openai_config(upstream.base_url)) for upstream in upstreams]
    return upstreams, "ipv4:" + ",".join(f"127.0.0.1:{gateway.port}" for gateway in gateways)


@pytest.mark.parametrize(("policy", "spread"), [("round_robin", True), (None, False)])
async def test_round_robin_spreads_calls_over_every_address_and_pick_first_does_not(
    make_gateway: GatewayFactory, policy: str | None, spread: bool
) -> None:
    upstreams, target = await two_gateways(make_gateway)
    try:
        async with AsyncAIClient(target=target, plaintext=True, load_balancing=policy) as client:
            # Both connections first: round_robin calls only over the addresses it has connected to.
            await asyncio.gather(*(client.generate(f"warm{i}", model="gpt-test") for i in range(4)))
            for upstream in upstreams:
                upstream.clear()
            for i in range(20):
                assert (await client.generate(f"call{i} x", model="gpt-test")).text == f"call{i} x"
        served = sorted(len(upstream.requests) for upstream in upstreams)
    finally:
        for upstream in upstreams:
            await upstream.stop()
    print(f"\n{policy or 'pick_first (default)'}: {served[0]} / {served[1]} of 20 calls")
    assert served == ([10, 10] if spread else [0, 20])


async def test_health_reports_serving_then_not_serving_while_the_gateway_drains(demo_gateway: Gateway) -> None:
    target = f"127.0.0.1:{demo_gateway.port}"
    async with AsyncAIClient(target=target, plaintext=True) as client:
        assert await client.health() == "SERVING"
        assert await client.health("holysheepai.AIService") == "SERVING"
        with pytest.raises(GatewayError) as caught:
            await client.health("no.such.Service")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        demo_gateway.health.enter_graceful_shutdown()
        assert await client.health() == "NOT_SERVING"
    with AIClient(target=target, plaintext=True) as sync_client:  # blocking: off the gateway's event loop
        assert await asyncio.to_thread(sync_client.health) == "NOT_SERVING"


async def test_the_health_command_exits_0_only_when_serving(
    demo_gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["health", "--target", f"127.0.0.1:{demo_gateway.port}", "--plaintext"]
    assert await asyncio.to_thread(main, argv) == 0
    assert capsys.readouterr().out == "SERVING\n"
    demo_gateway.health.enter_graceful_shutdown()
    assert await asyncio.to_thread(main, argv) == 1
    assert capsys.readouterr().out == "NOT_SERVING\n"


async def test_the_health_command_fails_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens there on a test machine.
    assert await asyncio.to_thread(main, ["health", "--target", "127.0.0.1:9", "--plaintext", "--timeout", "5"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "UNAVAILABLE" in err
