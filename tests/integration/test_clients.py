"""Clients on one gateway: their models, their limits and budgets, what each refusal says exactly, the
rate-limit trailers of a call that passes, token rotation, and who is calling as the upstream sees it.

Real gateways on 127.0.0.1 in front of the fake upstreams; the client counters run on a clock the test
moves (MemoryQuotaStore's), so windows and budget periods pass without waiting.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway, start_gateway
from server.config import ClientConfig, ClientDefaults, ClientLimits, GatewayConfig, MetricsConfig, ProviderConfig
from server.policy.store import MemoryQuotaStore
from server.routing.catalog import ModelConfig, Price
from tests.conftest import ENDLESS, UPSTREAM_KEY, openai_config
from tests.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi
from tests.rpc import collect_stream, detail, error_info, request, rich_status, unary_request

ALPHA = "alpha-token-0123456789"
ALPHA_OLD = "alpha-token-retired-0123456789"  # the token being rotated out: both work during the overlap
BETA = "beta-token-0123456789"
# Mid-December 2026, 23:00 UTC: an hour before the day's budgets reset, 16 days and an hour before the month's.
NOW = datetime.datetime(2026, 12, 15, 23, 0, tzinfo=datetime.UTC).timestamp()


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def two_clients(base_url: str, alpha: ClientLimits, beta: ClientLimits | None = None) -> GatewayConfig:
    """alpha may call gpt-test (priced) and the endless stream; beta only the demo model."""
    config = openai_config(base_url)
    models = tuple(replace(m, price=Price(1000.0, 1000.0)) if m.name == "gpt-test" else m for m in config.models)
    return replace(
        config,
        models=models,
        clients=(
            ClientConfig(
                "alpha", tokens=(digest(ALPHA), digest(ALPHA_OLD)), models=("gpt-test", ENDLESS), limits=alpha
            ),
            ClientConfig("beta", tokens=(digest(BETA),), models=("demo",), limits=beta or ClientLimits()),
        ),
        client_defaults=ClientDefaults(models=()),
        metrics=MetricsConfig(listen="127.0.0.1:0"),
    )


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        await gateway.stop(0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def start(started: list[Gateway], config: GatewayConfig, clock: Clock) -> Gateway:
    gateway = await start_gateway(config, quota_store=MemoryQuotaStore(clock=clock))
    started.append(gateway)
    return gateway


@pytest.fixture
async def stub(gateways: list[Gateway]) -> AsyncIterator[pb_grpc.AIServiceAsyncStub]:
    """A stub on the first gateway the test starts (connects lazily)."""
    channel: grpc.aio.Channel | None = None

    class Lazy:
        def __getattr__(self, name: str) -> object:
            nonlocal channel
            if channel is None:
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateways[0].port}")
            return getattr(pb_grpc.AIServiceStub(channel), name)

    yield Lazy()  # type: ignore[misc]
    if channel is not None:
        await channel.close()


async def generate(
    stub: pb_grpc.AIServiceAsyncStub, token: str, model: str = "gpt-test", **config: object
) -> dict[str, str]:
    """A Generate call that must succeed; its trailers."""
    call = stub.Generate(unary_request(model, "hello brave world", **config), metadata=auth(token), timeout=10)
    await call
    return {key: str(value) for key, value in (await call.trailing_metadata() or ())}


async def refused(
    stub: pb_grpc.AIServiceAsyncStub, token: str, model: str = "gpt-test", **config: object
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Generate(unary_request(model, "hello brave world", **config), metadata=auth(token), timeout=10)
    return error.value


def quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure.Violation:
    failure = detail(rich_status(error), error_details_pb2.QuotaFailure)
    assert failure is not None
    [violation] = failure.violations
    return violation


def retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    retry = detail(rich_status(error), error_details_pb2.RetryInfo)
    assert retry is not None
    return float(retry.retry_delay.ToMilliseconds()) / 1000


def metadata_without_request_id(error: grpc.aio.AioRpcError) -> dict[str, str]:
    metadata = dict(error_info(error).metadata)
    assert metadata.pop("request_id")
    return metadata


# --- models ------------------------------------------------------------------------------------------------


async def test_a_client_calls_its_own_models_and_is_refused_the_others_by_name_only(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits()), clock)

    await generate(stub, ALPHA)
    await generate(stub, BETA, "demo")
    error = await refused(stub, BETA, "gpt-test")
    streamed = await collect_stream(stub, request("fault-500"), metadata=auth(ALPHA))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "client 'beta' may not call model 'gpt-test'"
    assert error_info(error).reason == "MODEL_NOT_ALLOWED"
    assert metadata_without_request_id(error) == {"model": "gpt-test"}
    assert streamed.chunks == []
    assert streamed.error is not None
    assert streamed.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert metadata_without_request_id(streamed.error) == {"model": "fault-500"}
    # Neither refusal names the models either client may call, and neither reached the upstream.
    for refusal in (error, streamed.error):
        assert ENDLESS not in (refusal.details() or "")
        assert "demo" not in (refusal.details() or "")
    assert [r.model for r in fake_openai.requests] == ["gpt-test"]


async def test_list_models_shows_a_client_only_the_models_it_may_call(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits()), clock)

    alpha = await stub.ListModels(pb.ListModelsRequest(), metadata=auth(ALPHA), timeout=10)
    beta = await stub.ListModels(pb.ListModelsRequest(), metadata=auth(BETA), timeout=10)

    assert [m.name for m in alpha.models] == sorted(["gpt-test", ENDLESS])
    assert [m.name for m in beta.models] == ["demo"]


# --- rates ------------------------------------------------------------------------------------------------


async def test_over_requests_per_minute_a_client_gets_quota_failure_and_retry_info_and_the_other_is_unaffected(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    gateway = await start(
        gateways,
        two_clients(fake_openai.base_url, ClientLimits(requests_per_minute=2), ClientLimits(requests_per_minute=1)),
        clock,
    )

    first = await generate(stub, ALPHA)
    second = await generate(stub, ALPHA)
    error = await refused(stub, ALPHA)
    await generate(stub, BETA, "demo")  # beta's own bucket

    assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert (second["x-ratelimit-remaining-requests"], second["x-ratelimit-reset-requests"]) == ("0", "1m0s")
    assert "x-ratelimit-limit-tokens" not in first  # alpha has no token limit
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "QUOTA_EXCEEDED"
    assert metadata_without_request_id(error) == {
        "limit": "requests_per_minute",
        "subject": "client:alpha",
        "quota_value": "2",
    }
    violation = quota_failure(error)
    assert (violation.subject, violation.quota_id, violation.quota_value) == ("client:alpha", "requests_per_minute", 2)
    assert violation.quota_metric == "gateway.holysheep.ai/requests_per_minute"
    assert dict(violation.quota_dimensions) == {"client": "alpha"}
    assert retry_delay_s(error) == 30.0  # 2 a minute: one more every 30 s
    assert error.details() == "client 'alpha' is over its limit of 2 requests per minute; retry in 30.0 s"
    assert len(fake_openai.requests) == 2

    clock.now += 30
    assert (await generate(stub, ALPHA))["x-ratelimit-remaining-requests"] == "0"

    assert gateway.metrics is not None
    rejected = gateway.metrics.registry.get_sample_value(
        "gateway_quota_rejections_total", {"client": "alpha", "limit": "requests_per_minute"}
    )
    assert rejected == 1.0


async def test_tokens_are_estimated_before_the_call_and_corrected_by_the_reported_usage_after_it(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits(tokens_per_minute=100)), clock)

    # "hello brave world": 17 characters, about 5 tokens, plus max_tokens 95: estimated at 100, the whole limit.
    trailers = await generate(stub, ALPHA, max_tokens=95)
    # The fake reported 3 + 3 tokens: 94 of the 100 come back at once.
    error = await refused(stub, ALPHA, max_tokens=95)

    assert trailers["x-ratelimit-limit-tokens"] == "100"
    assert (trailers["x-ratelimit-remaining-tokens"], trailers["x-ratelimit-reset-tokens"]) == ("0", "1m0s")
    assert metadata_without_request_id(error)["limit"] == "tokens_per_minute"
    assert quota_failure(error).quota_id == "tokens_per_minute"
    assert retry_delay_s(error) == pytest.approx(3.6)  # 6 more tokens, at 100 a minute
    assert "(this call is estimated at 100 tokens)" in (error.details() or "")
    clock.now += 3.6
    await generate(stub, ALPHA, max_tokens=95)


async def test_over_its_concurrent_streams_a_client_is_refused_and_the_running_stream_is_not_cut(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits(concurrent_streams=1)), clock)

    running = stub.StreamGenerate(request(ENDLESS), metadata=auth(ALPHA), timeout=30)
    first = await running.read()
    assert isinstance(first, pb.StreamChunk)
    error = await refused(stub, ALPHA)
    more = await collect_stream(stub, request("gpt-test"), metadata=auth(ALPHA))

    assert first.delta
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert metadata_without_request_id(error)["limit"] == "concurrent_streams"
    assert retry_delay_s(error) == 1.0
    assert error.details() == "client 'alpha' is over its limit of 1 calls in flight; retry in 1.0 s"
    assert more.error is not None
    assert error_info(more.error).reason == "QUOTA_EXCEEDED"
    running.cancel()
    await fake_openai.wait_for_disconnect(model=ENDLESS)
    await generate(stub, ALPHA)  # the cancelled stream gave its slot back


async def test_a_stream_admitted_before_a_limit_is_reached_finishes(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits(requests_per_minute=1)), clock)
    fake_openai.hold()

    running = stub.StreamGenerate(request("gpt-test"), metadata=auth(ALPHA), timeout=30)
    await fake_openai.wait_for_requests(1)
    error = await refused(stub, ALPHA)
    fake_openai.release()
    chunks = [chunk async for chunk in running]

    assert error_info(error).reason == "QUOTA_EXCEEDED"
    assert chunks[-1].is_complete
    assert await running.code() == grpc.StatusCode.OK
    trailers = {key: str(value) for key, value in (await running.trailing_metadata() or ())}
    assert trailers["x-ratelimit-remaining-requests"] == "0"


# --- budgets ----------------------------------------------------------------------------------------------


async def test_a_spent_daily_budget_refuses_until_midnight_utc_and_is_overshot_only_by_calls_in_flight(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    # gpt-test costs 1000 USD per million tokens here: a 6-token call costs 0.006 USD.
    gateway = await start(gateways, two_clients(fake_openai.base_url, ClientLimits(budget_usd_per_day=0.01)), clock)
    fake_openai.hold()

    # Two calls in flight while 0 USD is spent: both admitted, and together they overshoot the budget.
    streams = [stub.StreamGenerate(request("gpt-test"), metadata=auth(ALPHA), timeout=30) for _ in range(2)]
    await fake_openai.wait_for_requests(2)
    fake_openai.release()
    for stream in streams:
        assert [chunk async for chunk in stream][-1].is_complete
    error = await refused(stub, ALPHA)

    assert gateway.clients is not None
    spent_today, spent_month = gateway.clients.store.spent("alpha")  # type: ignore[attr-defined]
    assert spent_today == spent_month == pytest.approx(0.012)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "BUDGET_EXCEEDED"
    assert metadata_without_request_id(error) == {
        "limit": "budget_usd_per_day",
        "subject": "client:alpha",
        "quota_value": "0.01",
    }
    assert quota_failure(error).subject == "client:alpha"
    assert retry_delay_s(error) == 3600.0  # 23:00 UTC: the day's budget resets in an hour
    assert error.details() == "client 'alpha' has spent its budget of 0.01 USD for today (UTC); it resets in 3600 s"

    clock.now += 3600
    await generate(stub, ALPHA)


async def test_a_spent_monthly_budget_refuses_until_the_first_of_the_next_month(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits(budget_usd_per_month=0.001)), clock)

    await generate(stub, ALPHA)
    error = await refused(stub, ALPHA)

    assert (error_info(error).reason, metadata_without_request_id(error)["limit"]) == (
        "BUDGET_EXCEEDED",
        "budget_usd_per_month",
    )
    assert retry_delay_s(error) == 16 * 86400 + 3600  # 2026-12-15 23:00 to 2027-01-01 00:00
    assert "for this month (UTC)" in (error.details() or "")


async def test_a_cancelled_stream_is_charged_for_what_it_streamed(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    config = two_clients(fake_openai.base_url, ClientLimits(budget_usd_per_day=1.0))
    endless = [replace(m, price=Price(1000.0, 1000.0)) if m.name == ENDLESS else m for m in config.models]
    gateway = await start(gateways, replace(config, models=tuple(endless)), clock)

    running = stub.StreamGenerate(request(ENDLESS), metadata=auth(ALPHA), timeout=30)
    await running.read()
    running.cancel()
    await fake_openai.wait_for_disconnect(model=ENDLESS)
    await generate(stub, BETA, "demo")  # a call after the cancel: the cancelled one has settled by now

    assert gateway.clients is not None
    spent_today, _ = gateway.clients.store.spent("alpha")  # type: ignore[attr-defined]
    # No usage is reported for a cut stream: the estimated prompt (17 characters: 5) and 1 delta.
    assert spent_today == pytest.approx(6 * 1000 / 1_000_000)


# --- credentials, identity ----------------------------------------------------------------------------------


async def test_both_tokens_of_a_rotation_are_the_same_client(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits(requests_per_minute=2)), clock)

    await generate(stub, ALPHA)
    assert (await generate(stub, ALPHA_OLD))["x-ratelimit-remaining-requests"] == "0"  # one bucket for both
    error = await refused(stub, ALPHA_OLD)
    wrong = await refused(stub, "alpha-token-never-issued")

    assert metadata_without_request_id(error)["subject"] == "client:alpha"
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_client_and_its_end_user_reach_the_upstream_and_the_access_log(
    gateways: list[Gateway],
    stub: pb_grpc.AIServiceAsyncStub,
    fake_openai: FakeOpenAIUpstream,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits()), clock)
    with_user = (*auth(ALPHA), ("x-end-user-id", "u-4711"))

    await stub.Generate(unary_request("gpt-test"), metadata=with_user, timeout=10)
    await collect_stream(stub, request("gpt-test"), metadata=auth(ALPHA))
    bad = (*auth(ALPHA), ("x-end-user-id", "not valid <id>"))
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.Generate(unary_request("gpt-test"), metadata=bad, timeout=10)

    assert [r.body["user"] for r in fake_openai.requests] == ["alpha:u-4711", "alpha"]
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = detail(rich_status(invalid.value), error_details_pb2.BadRequest)
    assert violations is not None
    assert [v.field for v in violations.field_violations] == ["metadata.x-end-user-id"]
    assert "not valid" not in (invalid.value.details() or "")
    assert len(fake_openai.requests) == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "server.access"]
    assert "client=alpha end_user=u-4711 " in lines[0]
    assert " end_user=" not in lines[1]


async def test_anthropic_gets_the_caller_as_metadata_user_id(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, clock: Clock
) -> None:
    async with FakeAnthropicUpstream(api_key=UPSTREAM_KEY) as fake:
        provider = ProviderConfig(
            name="fake-anthropic", kind="anthropic", base_url=fake.base_url, api_key_env="K", api_key=UPSTREAM_KEY
        )
        config = GatewayConfig(
            listen="127.0.0.1:0",
            providers=(provider,),
            models=(ModelConfig("echo", provider="fake-anthropic"),),
            clients=(ClientConfig("alpha", tokens=(digest(ALPHA),)),),
        )
        await start(gateways, config, clock)
        metadata = (*auth(ALPHA), ("x-end-user-id", "u-4711"))
        await stub.Generate(unary_request("echo"), metadata=metadata, timeout=10)
        [sent] = fake.requests
        await gateways.pop().stop(0)

    assert sent.body["metadata"] == {"user_id": "alpha:u-4711"}


async def test_an_interactive_turn_over_a_limit_gets_the_refusal_and_the_session_goes_on(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await start(gateways, two_clients(fake_openai.base_url, ClientLimits(requests_per_minute=1)), clock)
    bidi = Bidi(stub, metadata=auth(ALPHA))
    await bidi.start("gpt-test")

    await bidi.turn("t1", "one")
    [*_, done] = await bidi.until_end_of("t1")
    await bidi.turn("t2", "two")
    [turn_error] = await bidi.until_end_of("t2")
    clock.now += 60
    await bidi.turn("t3", "three")
    [*_, again] = await bidi.until_end_of("t3")
    outcome = await bidi.finish()

    assert done.WhichOneof("kind") == "done"
    assert again.WhichOneof("kind") == "done"
    assert turn_error.error.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "requests per minute" in turn_error.error.status.message
    assert outcome.code == grpc.StatusCode.OK


async def test_an_invalid_end_user_id_refuses_streams_and_sessions_too(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    # Without metrics: their interceptor's counting wrapper of a session's request stream, never read by a
    # session refused at once, is left to the garbage collector (a warning, and so an error, here).
    config = replace(two_clients(fake_openai.base_url, ClientLimits()), metrics=MetricsConfig())
    await start(gateways, config, clock)
    bad = (*auth(ALPHA), ("x-end-user-id", "x" * 129))

    streamed = await collect_stream(stub, request("gpt-test"), metadata=bad)
    session = stub.InteractiveStream(metadata=bad, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as interactive:
        await session.read()
    assert await session.code() == grpc.StatusCode.INVALID_ARGUMENT

    for error in (streamed.error, interactive.value):
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "INVALID_REQUEST"
    assert streamed.chunks == []
    assert fake_openai.requests == []


async def test_interactive_turns_carry_what_is_left_and_an_unlimited_clients_turns_carry_none(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    config = two_clients(fake_openai.base_url, ClientLimits(requests_per_minute=3, tokens_per_minute=1000))
    alpha, beta = config.clients
    config = replace(config, clients=(replace(alpha, models=("gpt-test", "fault-500")), beta))
    await start(gateways, config, clock)
    limited = Bidi(stub, metadata=auth(ALPHA))
    await limited.start("gpt-test")
    unlimited = Bidi(stub, metadata=auth(BETA))
    await unlimited.start("demo")

    await limited.turn("t1", "hello brave world", config=pb.GenerationConfig(max_tokens=95))
    [*_, first] = await limited.until_end_of("t1")
    await limited.turn("t2", "hello brave world", model="fault-500")  # fails upstream, after admission
    [failed] = await limited.until_end_of("t2")
    await limited.turn("t3", "hello brave world")
    [*_, third] = await limited.until_end_of("t3")
    await limited.turn("t4", "hello brave world")  # refused: no fourth request this minute
    [refusal] = await limited.until_end_of("t4")
    await unlimited.turn("u1", "hello")
    [*_, free] = await unlimited.until_end_of("u1")
    assert (await limited.finish()).code == grpc.StatusCode.OK
    assert (await unlimited.finish()).code == grpc.StatusCode.OK

    limits = first.done.rate_limits
    assert (limits.limit_requests, limits.remaining_requests) == (3, 2)
    assert limits.reset_requests.ToMilliseconds() == 20_000  # 3 a minute: one back every 20 s
    # "hello brave world" is about 5 tokens, plus max_tokens 95: 100 of the 1000 taken.
    assert (limits.limit_tokens, limits.remaining_tokens) == (1000, 900)
    assert limits.reset_tokens.ToMilliseconds() == 6_000
    assert failed.error.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert failed.error.rate_limits.remaining_requests == 1  # the failed turn was admitted: it counts
    assert third.done.rate_limits.remaining_requests == 0
    assert third.done.rate_limits.reset_requests.ToMilliseconds() == 60_000
    assert refusal.error.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert not refusal.error.HasField("rate_limits")  # refused before admission: nothing was taken
    assert free.WhichOneof("kind") == "done"
    assert not free.done.HasField("rate_limits")
