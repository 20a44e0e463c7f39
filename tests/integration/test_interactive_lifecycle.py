"""InteractiveStream sessions over time: backpressure from a slow client, a client that goes away, a gateway
that drains, and authentication."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.config import InteractiveConfig
from server.defaults import SHUTDOWN_ABORT_LEAD_S
from tests.conftest import CLIENT_TOKEN, ENDLESS, GatewayFactory, client_auth, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi, UpstreamMeter, assert_no_session_left, eventually, rid_of
from tests.rpc import detail, error_info, stub_for

Code = grpc.StatusCode
SLOW = "slow-tokens-50"
# A grace period no drain here comes near: a drain that ends before it ran out did not wait for it.
LONG_GRACE_S = 120.0
LONG = "fake-openai/tokens-200000"  # 200,000 deltas as fast as the socket takes them


async def test_a_client_that_stops_reading_stops_the_upstream_reads(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = await make_gateway(openai_config(fake_openai.base_url, interactive=InteractiveConfig(queue_size=8)))
    meter = UpstreamMeter(gateway.router).install(monkeypatch, gateway.router)
    # Without BDP probing the client's HTTP/2 window stays at its initial 64 KiB; with it, the window would
    # grow (up to its own cap) while this client does not read, which only moves the plateau.
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}", options=options) as channel:
        bidi = Bidi(pb_grpc.AIServiceStub(channel))
        await bidi.start(LONG)
        await bidi.turn("1", "go")
        [session] = gateway.service.sessions
        await eventually(lambda: session.buffered == 8, "the outbox fills")
        stalled = await meter.settled()

        # The outbox is full, the turn waits on it, and the upstream is read no further: what a session
        # holds is the outbox plus what HTTP/2 flow control lets into the client's window.
        assert session.buffered == 8
        assert stalled < 10_000, stalled
        assert await meter.quiet()
        assert meter.deltas == stalled

        # Reading again lets the turn pull from the upstream again.
        for _ in range(stalled):
            await bidi.read()
        assert await meter.settled() > stalled

        await bidi.cancel("1")
        await fake_openai.wait_for_disconnect()
        end = (await bidi.until_end_of("1"))[-1]
        assert end.done.finish_reason == pb.FINISH_REASON_CANCELLED
        assert (await bidi.finish()).code == Code.OK
    await assert_no_session_left(gateway)


async def test_a_client_that_goes_away_cancels_every_turn_and_upstream(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(openai_gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start(ENDLESS, mode=pb.SESSION_MODE_PIPELINE)
        for i in range(3):
            await bidi.turn(str(i), "one two three four five six seven eight")
        for _ in range(3):
            await bidi.read()
        bidi.call.cancel()
        await fake_openai.wait_for_disconnect(count=3)  # none of the three would end by itself
    await assert_no_session_left(openai_gateway)


async def test_the_channel_closing_ends_the_session(openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream) -> None:
    async with stub_for(openai_gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start(ENDLESS)
        await bidi.turn("1", "one two three four five six seven eight")
        await bidi.read()
    assert (await fake_openai.wait_for_disconnect()).model == ENDLESS  # the turn would not end by itself
    await assert_no_session_left(openai_gateway)


# --- drain ------------------------------------------------------------------------------------------------


async def test_drain_sends_go_away_lets_running_turns_finish_refuses_new_ones_then_ends(
    openai_gateway: Gateway,
) -> None:
    async with stub_for(openai_gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start(SLOW)
        await bidi.turn("1", "a b c d e f")
        await bidi.read()
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopping = asyncio.create_task(openai_gateway.stop(LONG_GRACE_S))
        before = await bidi.until(lambda r: r.WhichOneof("kind") == "go_away")
        await bidi.turn("2", "too late")
        outcome = await bidi.rest()
        await stopping

    time_left = before[-1].go_away.time_left.ToTimedelta().total_seconds()
    # The grace period, less the lead at which calls are ended.
    assert time_left == pytest.approx(LONG_GRACE_S - SHUTDOWN_ABORT_LEAD_S)
    refused = next(r for r in outcome.responses if rid_of(r) == "2")
    assert refused.error.status.code == Code.UNAVAILABLE.value[0]
    info = detail(refused.error.status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert info.reason == "SHUTTING_DOWN"
    ends = [r.done for r in outcome.responses if r.WhichOneof("kind") == "done"]
    assert [(d.request_id, d.finish_reason) for d in ends] == [("1", pb.FINISH_REASON_STOP)]
    assert outcome.code == Code.OK
    assert loop.time() - began < time_left, "the gateway stops as soon as the session has ended"
    await assert_no_session_left(openai_gateway)


async def test_drain_of_an_idle_session_sends_go_away_and_ends_it_at_once(openai_gateway: Gateway) -> None:
    async with stub_for(openai_gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("demo")
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopping = asyncio.create_task(openai_gateway.stop(LONG_GRACE_S))
        outcome = await bidi.rest()
        await stopping

    assert outcome.kinds() == ["go_away"]
    assert outcome.code == Code.OK
    assert loop.time() - began < LONG_GRACE_S - SHUTDOWN_ABORT_LEAD_S  # ended by the drain, not by its deadline


async def test_a_turn_outlasting_the_grace_period_ends_the_session_with_shutting_down(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(openai_gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("fault-stall")
        await bidi.turn("1", "hello")
        await fake_openai.wait_for_requests(1)  # the turn runs (and stalls) upstream
        stopping = asyncio.create_task(openai_gateway.stop(0.5))
        outcome = await bidi.rest()
        await stopping

    assert outcome.kinds() == ["go_away"]
    assert outcome.code == Code.UNAVAILABLE
    assert outcome.error is not None
    assert error_info(outcome.error).reason == "SHUTTING_DOWN"
    await assert_no_session_left(openai_gateway)


async def test_a_session_opened_while_draining_is_refused(openai_gateway: Gateway) -> None:
    openai_gateway.service.draining = True
    async with stub_for(openai_gateway) as stub:
        outcome = await Bidi(stub).rest()
    assert outcome.code == Code.UNAVAILABLE
    assert outcome.error is not None
    assert error_info(outcome.error).reason == "SHUTTING_DOWN"


# --- authentication ---------------------------------------------------------------------------------------


@pytest.fixture
async def auth_gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    return await make_gateway(openai_config(fake_openai.base_url, auth=client_auth()))


async def test_a_session_without_a_token_is_unauthenticated_before_any_upstream_call(
    auth_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(auth_gateway) as stub:
        # The call is refused before the session reads anything. (Not writing avoids grpc/grpc#36066: a
        # grpc.aio write racing the refusal would replace UNAUTHENTICATED with INTERNAL on this side.)
        outcome = await Bidi(stub).rest()
    assert (outcome.code, outcome.responses) == (Code.UNAUTHENTICATED, [])
    assert fake_openai.requests == []


async def test_a_session_with_a_token_runs(auth_gateway: Gateway) -> None:
    async with stub_for(auth_gateway) as stub:
        bidi = Bidi(stub, metadata=(("authorization", f"Bearer {CLIENT_TOKEN}"),))
        await bidi.start("gpt-test")
        await bidi.turn("1", "hello")
        outcome = await bidi.finish()
    assert outcome.kinds() == ["delta", "done"]
    assert outcome.code == Code.OK
