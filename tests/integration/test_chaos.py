"""The chaos table: every fault of the fake upstream, crossed with Generate and StreamGenerate, through a real
gateway with retries, fallbacks and breakers on (tiny delays, so the table is fast).

Each row pins the status code, the ErrorInfo reason and metadata, RetryInfo, the number of upstream
attempts, and exactly what the client received; every stream ends with exactly one final chunk or one
non-OK status. tests/integration/test_openai_bridge.py pins the same faults with retries off.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from server.app import Gateway
from server.config import GatewayConfig, ModelConfig, ProviderConfig
from server.defaults import ERROR_DOMAIN
from server.resilience.breaker import BreakerPolicy
from server.resilience.resume import CONTINUE_INSTRUCTION
from server.resilience.retry import RetryPolicy
from server.routing.catalog import Deployment
from tests.conftest import ENDLESS, FAKE_MODELS, UPSTREAM_KEY, GatewayFactory
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.rpc import StreamOutcome, collect_stream, detail, error_info, request, rich_status, stub_for, unary_request
from tests.server.scripted import FakeTime

pytestmark = pytest.mark.asyncio

Code = grpc.StatusCode
PROMPT = "hello brave world"
REPLY = ("hello", " brave", " world")
TWO = REPLY[:2]

# The gateway's stream timers run on the wall clock, so a short one can fire on a loaded machine while the
# fake is still answering. Each provider (all three are the same fake) has short timers only where no answer
# is coming: "stalling" serves the stall (the first-token and read timers end each attempt) and "idling"
# the streams that go silent (the idle timer ends them); "fake", everything else, waits far longer than any
# answer takes.
FIRST_TOKEN_S = 0.4  # "stalling"
READ_TIMEOUT_S = 0.6  # "stalling"
IDLE_S = 0.3  # "idling"
PATIENT_S = 60.0  # every timer of "fake", and the first-token and read timers of "idling"
SLOW_FIRST_TOKEN = "slow-first-token-600"  # on "idling": a first token after twice the idle timeout
RETRY = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.05, retry_after_cap_s=0.5)

FAULTS = (*FAKE_MODELS, SLOW_FIRST_TOKEN)
PROVIDER_OF = {"fault-stall": "stalling", SLOW_FIRST_TOKEN: "idling", ENDLESS: "idling"}


def fake(model: str, upstream: str | None = None, **fields: object) -> ModelConfig:
    provider = PROVIDER_OF.get(model, "fake")
    return ModelConfig(name=model, provider=provider, upstream_model=upstream or model, **fields)  # type: ignore[arg-type]


def fake_provider(name: str, base_url: str, *, first_token_s: float, read_s: float, idle_s: float) -> ProviderConfig:
    return ProviderConfig(
        name=name,
        kind="openai",
        base_url=base_url,
        api_key_env="FAKE_KEY",
        api_key=UPSTREAM_KEY,
        read_timeout_s=read_s,
        first_token_timeout_s=first_token_s,
        stream_idle_timeout_s=idle_s,
    )


def chaos_config(base_url: str, **overrides: object) -> GatewayConfig:
    """The fake upstream as providers "fake", "stalling" and "idling" (see their timers above), a refusing
    provider, and models for every fault plus the fallback and resume rows."""
    providers = (
        fake_provider("fake", base_url, first_token_s=PATIENT_S, read_s=PATIENT_S, idle_s=PATIENT_S),
        fake_provider("stalling", base_url, first_token_s=FIRST_TOKEN_S, read_s=READ_TIMEOUT_S, idle_s=PATIENT_S),
        fake_provider("idling", base_url, first_token_s=PATIENT_S, read_s=PATIENT_S, idle_s=IDLE_S),
        ProviderConfig(name="refusing", kind="openai", base_url="http://127.0.0.1:9/v1"),
    )
    models = (
        *(fake(m) for m in FAULTS),
        ModelConfig(name="refused", provider="refusing", upstream_model="gpt-test"),
        fake("echo-a", "gpt-test"),
        fake("echo-b", "gpt-test"),
        fake("falls-back", "fault-503", fallbacks=("echo-a",)),
        fake(
            "by-class-429",
            "fault-429-no-retry-after",
            fallbacks=("echo-b",),
            fallbacks_by_class=(("rate_limited", ("echo-a",)),),
        ),
        fake("by-class-503", "fault-503", fallbacks=("echo-b",), fallbacks_by_class=(("rate_limited", ("echo-a",)),)),
        ModelConfig(
            name="standby",
            deployments=(Deployment("fake", "fault-503", weight=1), Deployment("fake", "gpt-test", weight=0)),
        ),
        fake("resumable", "fault-cut-mid", resume="continue", fallbacks=("echo-a",)),
    )
    config = GatewayConfig(listen="127.0.0.1:0", providers=providers, models=models, grace_period_s=1.0, retry=RETRY)
    return replace(config, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def chaos_gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    return await make_gateway(chaos_config(fake_openai.base_url))


def record_sleeps(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the gateway's call plans ask for (backoff, Retry-After), in order; the waits still happen."""
    sleeps: list[float] = []
    resilience = gateway.router.resilience
    sleep: Callable[[float], Awaitable[None]] = resilience.sleep

    async def recorded(seconds: float) -> None:
        sleeps.append(seconds)
        await sleep(seconds)

    monkeypatch.setattr(resilience, "sleep", recorded)
    return sleeps


@dataclass(frozen=True)
class Row:
    """What a client sees of one fault, with retries on. `unary_*` say where Generate differs."""

    model: str
    code: Code = Code.OK
    reason: str = ""
    attempts: int = 1
    deltas: tuple[str, ...] = ()  # StreamGenerate: the deltas before the error (or the whole reply)
    retry_after_s: float | None = None
    stopped_by: str | None = None
    unary_code: Code | None = None
    unary_reason: str | None = None
    unary_attempts: int | None = None
    unary_stopped_by: str | None = None
    served: str | None = None  # OK rows: the model that served (default: the row's model)
    metadata: tuple[tuple[str, str], ...] = ()
    unary_metadata: tuple[tuple[str, str], ...] = ()
    # Each attempt is ended by a timer mid-response, so it leaves its connection behind. A timer can also end
    # an attempt before its request has all reached the fake, so the fake counts its connections instead.
    counted_by_connection: bool = False


def limited(model: str, attempts: int, **fields: Any) -> Row:
    return Row(model, Code.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", attempts, **fields)


def outage(model: str, reason: str = "UPSTREAM_UNAVAILABLE", **fields: Any) -> Row:
    """Retried before the first token until max_attempts, then UNAVAILABLE."""
    return Row(model, Code.UNAVAILABLE, reason, 3, stopped_by="max_attempts", **fields)


def cut_after_two(model: str, reason: str) -> Row:
    """A stream ends with the error after two deltas; Generate, which had sent nothing, retried."""
    return Row(
        model, Code.UNAVAILABLE, reason, 1, TWO, unary_reason="UPSTREAM_UNAVAILABLE", unary_attempts=3,
        unary_stopped_by="max_attempts",
    )  # fmt: skip


ROWS = [
    # Client errors and the gateway's own credentials: never retried.
    Row("fault-400", Code.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
    Row("fault-401", Code.INTERNAL, "UPSTREAM_AUTH_FAILED"),
    Row("fault-inband-invalid-before", Code.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
    # Rate limits: a Retry-After over the cap (0.5 s) is not waited for, and RetryInfo keeps the upstream's delay.
    limited("fault-429", 1, retry_after_s=7.0, stopped_by="retry_after_cap"),
    limited("fault-429-ms", 1, retry_after_s=1.5, stopped_by="retry_after_cap"),
    limited("fault-429-no-retry-after", 3, stopped_by="max_attempts"),
    limited("fault-inband-ratelimit-before", 3, stopped_by="max_attempts"),
    # Outages before the first token: retried with backoff, invisible to the client until the last attempt.
    outage("fault-408"),
    outage("fault-500"),
    outage("fault-502"),
    outage("fault-503"),
    outage("fault-reset-before"),
    outage("fault-inband-error-before"),
    outage("fault-malformed", "UPSTREAM_BAD_RESPONSE"),
    # A stall after the headers: the first-token timer ends each attempt (Generate: the read timeout).
    outage(
        "fault-stall",
        "UPSTREAM_STREAM_IDLE",
        unary_code=Code.DEADLINE_EXCEEDED,
        unary_reason="UPSTREAM_TIMEOUT",
        metadata=(("phase", "waiting for the first token"), ("timeout_s", f"{FIRST_TOKEN_S:g}")),
        unary_metadata=(("phase", "waiting for data"),),
        counted_by_connection=True,
    ),
    # After the first token a stream is never retried: it ends with the error and the partial usage.
    cut_after_two("fault-reset-mid", "UPSTREAM_STREAM_INTERRUPTED"),
    cut_after_two("fault-cut-mid", "UPSTREAM_STREAM_INTERRUPTED"),
    cut_after_two("fault-inband-error-after", "UPSTREAM_UNAVAILABLE"),
    # A slow first token is not an idle stream: it is waited for (0.6 s > the 0.3 s idle timeout).
    Row(SLOW_FIRST_TOKEN, deltas=REPLY),
    # Fallbacks: the final chunk names the model that finally served.
    Row("falls-back", attempts=4, deltas=REPLY, served="echo-a"),
    Row("by-class-429", attempts=4, deltas=REPLY, served="echo-a"),
    Row("by-class-503", attempts=4, deltas=REPLY, served="echo-b"),
    Row("standby", attempts=2, deltas=REPLY, served="standby"),
]


def assert_ends_once(outcome: StreamOutcome) -> None:
    """Exactly one of: one final chunk, last, and status OK; or no final chunk and a non-OK status."""
    if outcome.error is None:
        assert len(outcome.finals) == 1
        assert outcome.chunks[-1] is outcome.finals[0]
    else:
        assert outcome.finals == []
        assert outcome.error.code() not in (Code.OK, Code.UNKNOWN)


def assert_error(
    error: grpc.aio.AioRpcError,
    row: Row,
    code: Code,
    reason: str,
    attempts: int,
    stopped_by: str | None,
    metadata: tuple[tuple[str, str], ...],
) -> None:
    assert error.code() == code, error.details()
    info = error_info(error)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    assert info.metadata["attempts"] == str(attempts)
    assert (info.metadata["provider"], info.metadata["model"]) == (PROVIDER_OF.get(row.model, "fake"), row.model)
    assert info.metadata.get("retry_stopped_by") == stopped_by
    for key, value in metadata:
        assert info.metadata[key] == value
    retry = detail(rich_status(error), error_details_pb2.RetryInfo)
    if row.retry_after_s is None:
        assert retry is None
    else:
        assert retry is not None
        assert retry.retry_delay.ToMilliseconds() == row.retry_after_s * 1000
    assert UPSTREAM_KEY not in f"{error.details()} {rich_status(error)}"


async def assert_upstream_attempts(upstream: FakeOpenAIUpstream, row: Row, attempts: int) -> None:
    """The fake saw `attempts` attempts: requests, or connections (`Row.counted_by_connection`), once it has
    caught up with them (the gateway and the fake share an event loop: the client may hear first)."""
    if row.counted_by_connection:
        await upstream.wait_for_connections(attempts)
        assert upstream.connections_accepted == attempts
    else:
        await upstream.wait_for_requests(attempts)
        assert len(upstream.requests) == attempts


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.model)
async def test_stream(
    chaos_gateway: Gateway, fake_openai: FakeOpenAIUpstream, row: Row, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = record_sleeps(chaos_gateway, monkeypatch)
    async with stub_for(chaos_gateway) as stub:
        outcome = await collect_stream(stub, request(row.model, PROMPT))

    assert_ends_once(outcome)
    assert "".join(outcome.deltas) == "".join(row.deltas)  # pieces that arrive together leave as one chunk
    await assert_upstream_attempts(fake_openai, row, row.attempts)
    if row.code == Code.OK:
        assert outcome.error is None, outcome.error
        final = outcome.finals[0]
        assert (final.model, final.provider) == (row.served or row.model, PROVIDER_OF.get(row.model, "fake"))
        assert final.usage.completion_tokens == len(REPLY)
    else:
        assert outcome.error is not None
        assert_error(outcome.error, row, row.code, row.reason, row.attempts, row.stopped_by, row.metadata)
        if row.deltas:
            metadata = error_info(outcome.error).metadata
            assert metadata["partial_completion_tokens"] == metadata["deltas_sent"] == str(len(row.deltas))
    assert all(s <= RETRY.retry_after_cap_s for s in sleeps), sleeps  # capped Retry-After: no 7 s sleep


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.model)
async def test_generate(chaos_gateway: Gateway, fake_openai: FakeOpenAIUpstream, row: Row) -> None:
    code, reason = row.unary_code or row.code, row.unary_reason or row.reason
    attempts = row.unary_attempts or row.attempts
    async with stub_for(chaos_gateway) as stub:
        try:
            response = await stub.Generate(unary_request(row.model, PROMPT), timeout=10)
        except grpc.aio.AioRpcError as exc:
            error: grpc.aio.AioRpcError | None = exc
        else:
            error = None

    await assert_upstream_attempts(fake_openai, row, attempts)
    if code == Code.OK:
        assert error is None, error
        assert response.content == PROMPT
        assert (response.model, response.provider) == (row.served or row.model, PROVIDER_OF.get(row.model, "fake"))
    else:
        assert error is not None
        assert_error(error, row, code, reason, attempts, row.unary_stopped_by or row.stopped_by, row.unary_metadata)


async def test_connection_refused_is_retried_then_unavailable(chaos_gateway: Gateway) -> None:
    async with stub_for(chaos_gateway) as stub:
        outcome = await collect_stream(stub, request("refused"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(unary_request("refused"), timeout=30)

    assert_ends_once(outcome)
    assert outcome.chunks == []
    for error in (outcome.error, raised.value):
        assert error is not None
        assert error.code() == Code.UNAVAILABLE
        info = error_info(error)
        assert (info.reason, info.metadata["provider"]) == ("UPSTREAM_UNAVAILABLE", "refusing")
        assert (info.metadata["attempts"], info.metadata["retry_stopped_by"]) == ("3", "max_attempts")


async def test_a_stream_that_stalls_after_its_first_token_ends_at_the_idle_timeout(
    chaos_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    started = time.monotonic()
    async with stub_for(chaos_gateway) as stub:
        # ENDLESS sends its second word after an hour: only the idle timer can end this stream.
        outcome = await collect_stream(stub, request(ENDLESS, PROMPT), timeout=60)
    elapsed = time.monotonic() - started

    assert_ends_once(outcome)
    assert outcome.deltas == ["hello"]
    assert outcome.error is not None
    assert outcome.error.code() == Code.UNAVAILABLE  # the upstream stalled; the client's deadline is far
    info = error_info(outcome.error)
    assert (info.reason, info.metadata["phase"], info.metadata["timeout_s"]) == (
        "UPSTREAM_STREAM_IDLE",
        "between tokens",
        f"{IDLE_S:g}",
    )
    assert info.metadata["partial_completion_tokens"] == "1"
    assert elapsed >= IDLE_S  # the timer never ends a stream early
    assert (await fake_openai.wait_for_disconnect()).model == ENDLESS
    assert len(fake_openai.requests) == 1


async def test_resume_continue_finishes_a_cut_stream_on_the_fallback_as_one_stream(
    chaos_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(chaos_gateway) as stub:
        outcome = await collect_stream(stub, request("resumable", PROMPT))

    assert_ends_once(outcome)
    assert outcome.error is None
    # The fake echoes the last user message, here the instruction to continue.
    continued = CONTINUE_INSTRUCTION.split(" ")
    assert "".join(outcome.deltas) == "".join([*TWO, continued[0], *(f" {w}" for w in continued[1:])])
    final = outcome.finals[0]
    assert final.resumed
    assert (final.model, final.provider) == ("echo-a", "fake")
    assert final.usage.completion_tokens == 2 + len(continued)  # both attempts
    assert final.usage.estimated  # the cut attempt's tokens are the gateway's count
    cut, resumed = fake_openai.requests
    assert (cut.model, resumed.model) == ("fault-cut-mid", "gpt-test")
    assert resumed.body["messages"][-2:] == [
        {"role": "assistant", "content": "hello brave"},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]


async def breaker_gateway(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, failures: int, cooldown_s: float
) -> tuple[Gateway, FakeTime]:
    """One attempt per model, and breakers that open after `failures` failing calls in a row, on a fake clock
    (set before the first call, so that the breakers, made on first use, take it too)."""
    breaker = BreakerPolicy(consecutive_failures=failures, cooldown_s=cooldown_s)
    config = chaos_config(fake_openai.base_url, retry=replace(RETRY, max_attempts=1), circuit_breaker=breaker)
    gateway = await make_gateway(config)
    time = FakeTime()
    gateway.router.resilience.clock = time.clock
    gateway.router.resilience.sleep = time.sleep
    return gateway, time


async def test_the_breaker_opens_fails_fast_to_the_fallback_and_probes_after_the_cooldown(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway, time = await breaker_gateway(make_gateway, fake_openai, failures=2, cooldown_s=30.0)

    def primary_attempts() -> int:
        return sum(1 for r in fake_openai.requests if r.model == "fault-503")

    async with stub_for(gateway) as stub:
        served = [(await stub.Generate(unary_request("falls-back"), timeout=30)).model for _ in range(3)]
        assert served == ["echo-a"] * 3
        assert primary_attempts() == 2  # open after two failures: the third call went straight to the fallback

        time.now += 29.9
        await stub.Generate(unary_request("falls-back"), timeout=30)
        assert primary_attempts() == 2  # still open just before the cooldown ends

        time.now += 0.1
        outcome = await collect_stream(stub, request("falls-back"))  # the probe fails: open again
        assert outcome.finals[0].model == "echo-a"
        assert primary_attempts() == 3
        await stub.Generate(unary_request("falls-back"), timeout=30)
        assert primary_attempts() == 3


async def test_with_every_circuit_open_the_call_fails_fast_with_circuit_open(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway, _ = await breaker_gateway(make_gateway, fake_openai, failures=1, cooldown_s=60)
    async with stub_for(gateway) as stub:
        await collect_stream(stub, request("fault-503"))
        outcome = await collect_stream(stub, request("fault-503"))

    assert_ends_once(outcome)
    assert outcome.error is not None
    assert outcome.error.code() == Code.UNAVAILABLE
    info = error_info(outcome.error)
    assert (info.reason, info.metadata["model"]) == ("CIRCUIT_OPEN", "fault-503")
    assert len(fake_openai.requests) == 1


async def test_an_exhausted_retry_budget_stops_retrying(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    config = chaos_config(fake_openai.base_url, retry=replace(RETRY, budget_ratio=0.0, budget_reserve=1.0))
    gateway = await make_gateway(config)
    async with stub_for(gateway) as stub:
        first = await collect_stream(stub, request("fault-503"))
        second = await collect_stream(stub, request("fault-503"))

    assert first.error is not None
    assert second.error is not None
    assert error_info(first.error).metadata["attempts"] == "2"  # the one retry of the reserve
    assert (error_info(second.error).metadata["attempts"], error_info(second.error).metadata["retry_stopped_by"]) == (
        "1",
        "retry_budget",
    )
    assert len(fake_openai.requests) == 3


async def test_retry_after_is_honoured_within_the_cap_and_never_past_the_deadline(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = chaos_config(fake_openai.base_url, retry=replace(RETRY, max_attempts=2, retry_after_cap_s=10.0))
    gateway = await make_gateway(config)
    sleeps = record_sleeps(gateway, monkeypatch)
    async with stub_for(gateway) as stub:
        short = await collect_stream(stub, request("fault-429"), timeout=5.0)  # 7 s would pass the deadline
        assert len(fake_openai.requests) == 1
        assert sleeps == []  # failed at once with the last error instead of sleeping
        honoured = await collect_stream(stub, request("fault-429-ms"), timeout=60.0)

    assert short.error is not None
    assert short.error.code() == Code.RESOURCE_EXHAUSTED
    assert error_info(short.error).metadata["retry_stopped_by"] == "deadline"
    assert honoured.error is not None
    [slept] = sleeps  # one wait, for the rest of retry-after-ms: 1500 after the 429 was read...
    first, second = fake_openai.requests[1:]
    assert 0 < slept <= 1.5
    assert second.time - first.time >= 1.5  # ...so the retry came 1.5 s after the first request or later
    assert error_info(honoured.error).metadata["attempts"] == "2"
