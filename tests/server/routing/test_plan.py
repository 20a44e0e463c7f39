"""The router's attempt loop with scripted providers and a fake clock: retries, waits, fallbacks, breakers,
budgets, limits, held first chunks, resume and the stream timers. No sockets, no real sleeping."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from contextlib import aclosing

import pytest

from server.errors import (
    CircuitOpen,
    GatewayError,
    GatewayOverloaded,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.resilience.breaker import BreakerPolicy, BreakerState
from server.resilience.limits import UpstreamLimits
from server.resilience.resume import CONTINUE_INSTRUCTION
from server.resilience.retry import RetryPolicy
from server.routing.catalog import Catalog, Deployment, ModelConfig
from server.routing.dispatch import Router
from server.routing.plan import Resilience, StreamTimeouts, failover_order, pick
from server.types import ChatMessage, ChatRequest, Completion, Finish, Role, StreamEvent, TextDelta, Usage
from tests.server.scripted import Cut, FakeTime, Reply, ScriptedProvider, Scripts, Stall

REPLY = Reply("hello brave world")
DELTAS = [TextDelta("hello"), TextDelta(" brave"), TextDelta(" world")]


def unavailable(provider: str = "a") -> UpstreamUnavailable:
    return UpstreamUnavailable(f"upstream {provider} failed (HTTP 503)", provider=provider, http_status=503)


def rate_limited(retry_after_s: float | None, provider: str = "a") -> UpstreamRateLimited:
    return UpstreamRateLimited("rate limited", provider=provider, http_status=429, retry_after_s=retry_after_s)


def interrupted(provider: str = "a") -> UpstreamUnavailable:
    return UpstreamUnavailable("cut", provider=provider, reason="UPSTREAM_STREAM_INTERRUPTED")


class Setup:
    """A router over scripted providers "a" and "b", on a fake clock."""

    def __init__(
        self,
        scripts: Scripts,
        models: Sequence[ModelConfig],
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        limits: UpstreamLimits | None = None,
        timeouts: StreamTimeouts | None = None,
        rng: float = 0.5,
    ) -> None:
        self.time = FakeTime()
        self.providers = {name: ScriptedProvider(name, script) for name, script in scripts.items()}
        self.resilience = Resilience(
            retry=retry or RetryPolicy(backoff_base_s=1.0, backoff_cap_s=8.0, retry_after_cap_s=5.0),
            breaker=breaker,
            limits=limits,
            timeouts=dict.fromkeys(self.providers, timeouts) if timeouts else None,
            clock=self.time.clock,
            sleep=self.time.sleep,
            rng=lambda: rng,
        )
        catalog = Catalog(models, self.providers)
        self.router = Router(catalog, self.providers, rng=lambda: 0.0, resilience=self.resilience)

    def model(self, name: str) -> ModelConfig:
        model = self.router.catalog.resolve(name)
        assert model is not None
        return model

    async def stream(self, name: str, timeout_s: float | None = 30.0) -> tuple[list[StreamEvent], GatewayError | None]:
        events: list[StreamEvent] = []
        try:
            async with aclosing(self.router.stream(self.model(name), chat(timeout_s))) as stream:
                async for event in stream:
                    events.append(event)
        except GatewayError as error:
            return events, error
        return events, None

    async def complete(self, name: str, timeout_s: float | None = 30.0) -> Completion | GatewayError:
        try:
            return await self.router.complete(self.model(name), chat(timeout_s))
        except GatewayError as error:
            return error

    def calls(self, provider: str, upstream: str) -> int:
        return self.providers[provider].calls(upstream)


def chat(timeout_s: float | None = 30.0, max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest("m", (ChatMessage(Role.USER, "hello brave world"),), timeout_s=timeout_s)


def model(name: str, provider: str = "a", upstream: str | None = None, **fields: object) -> ModelConfig:
    return ModelConfig(name=name, provider=provider, upstream_model=upstream or name, **fields)  # type: ignore[arg-type]


def finish_of(events: list[StreamEvent]) -> Finish:
    assert isinstance(events[-1], Finish)
    assert sum(isinstance(e, Finish) for e in events) == 1
    return events[-1]


# --- retries before the first token ------------------------------------------------------------------


async def test_a_503_is_retried_on_the_same_deployment_after_a_jittered_backoff() -> None:
    setup = Setup({"a": {"m": [unavailable(), REPLY]}}, [model("m")])

    events, error = await setup.stream("m")

    assert error is None
    assert events[:-1] == DELTAS  # the failed attempt left no trace
    assert finish_of(events).served is not None
    assert setup.calls("a", "m") == 2
    assert setup.time.sleeps == [0.5]  # full jitter: rng 0.5 of min(cap 8, base 1 * 2**0)


async def test_backoff_doubles_per_failure_up_to_the_cap_and_attempts_stop_at_max_attempts() -> None:
    retry = RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_cap_s=3.0)
    setup = Setup({"a": {"m": [unavailable()]}}, [model("m")], retry=retry, rng=1.0)

    _, error = await setup.stream("m")

    assert isinstance(error, UpstreamUnavailable)
    assert setup.calls("a", "m") == 5
    assert setup.time.sleeps == [1.0, 2.0, 3.0, 3.0]
    assert (error.metadata["attempts"], error.metadata["retry_stopped_by"]) == ("5", "max_attempts")
    assert (error.metadata["model"], error.metadata["deployment"]) == ("m", "a/m")


@pytest.mark.parametrize(
    "error",
    [
        UpstreamRejected("invalid", provider="a", http_status=400),
        UpstreamAuthFailed("bad key", provider="a", http_status=401),
    ],
    ids=["invalid-argument", "auth-failed"],
)
async def test_client_and_credential_errors_are_neither_retried_nor_fallen_back(error: UpstreamError) -> None:
    setup = Setup({"a": {"m": [error], "f": [REPLY]}}, [model("m", fallbacks=("f",)), model("f")])

    events, raised = await setup.stream("m")

    assert events == []
    assert type(raised) is type(error)
    assert raised is not None
    assert raised.metadata["attempts"] == "1"
    assert "retry_stopped_by" not in raised.metadata
    assert (setup.calls("a", "m"), setup.calls("a", "f")) == (1, 0)


async def test_a_retry_after_within_the_cap_is_waited_exactly() -> None:
    setup = Setup({"a": {"m": [rate_limited(1.5), REPLY]}}, [model("m")])

    _, error = await setup.stream("m")

    assert error is None
    assert setup.time.sleeps == [1.5]


async def test_a_retry_after_beyond_the_cap_is_not_waited_and_the_error_keeps_the_upstreams_delay() -> None:
    setup = Setup({"a": {"m": [rate_limited(7.0)]}}, [model("m")])

    _, error = await setup.stream("m")

    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after_s == 7.0  # the client's RetryInfo says what the upstream said
    assert setup.time.sleeps == []
    assert setup.calls("a", "m") == 1
    assert error.metadata["retry_stopped_by"] == "retry_after_cap"


@pytest.mark.parametrize("has_fallback", [True, False], ids=["fallback", "no-fallback"])
async def test_a_long_retry_after_is_waited_only_when_no_fallback_is_left(has_fallback: bool) -> None:
    retry = RetryPolicy(backoff_base_s=0.1, backoff_cap_s=1.0, retry_after_cap_s=10.0)
    fallbacks = ("f",) if has_fallback else ()
    scripts: Scripts = {"a": {"m": [rate_limited(3.0), REPLY], "f": [REPLY]}}
    setup = Setup(scripts, [model("m", fallbacks=fallbacks), model("f")], retry=retry)

    events, error = await setup.stream("m")

    assert error is None
    served = finish_of(events).served
    assert served is not None
    if has_fallback:
        assert (served.model, setup.time.sleeps) == ("f", [])
    else:
        assert (served.model, setup.time.sleeps) == ("m", [3.0])


async def test_a_wait_that_would_pass_the_deadline_is_not_slept_the_last_error_is_raised() -> None:
    setup = Setup({"a": {"m": [rate_limited(4.0)]}}, [model("m")])

    _, error = await setup.stream("m", timeout_s=3.0)

    assert isinstance(error, UpstreamRateLimited)
    assert setup.time.sleeps == []
    assert setup.time.now == 1000.0
    assert error.metadata["retry_stopped_by"] == "deadline"


async def test_each_attempt_gets_what_is_left_of_the_deadline() -> None:
    setup = Setup({"a": {"m": [rate_limited(2.0), REPLY]}}, [model("m")])

    await setup.stream("m", timeout_s=10.0)

    first, second = setup.providers["a"].requests
    assert (first.timeout_s, second.timeout_s) == (10.0, 8.0)


# --- hold the first chunk ------------------------------------------------------------------------------


async def test_an_in_band_error_before_the_first_token_is_retried_invisibly() -> None:
    inband = UpstreamUnavailable("overloaded", provider="a", metadata={"upstream_error_type": "overloaded"})
    malformed = UpstreamBadResponse("malformed JSON", provider="a")
    setup = Setup({"a": {"m": [inband, malformed, REPLY]}}, [model("m")])

    events, error = await setup.stream("m")

    assert error is None
    assert events[:-1] == DELTAS
    assert setup.calls("a", "m") == 3


async def test_a_failure_after_the_first_token_ends_the_stream_with_the_partial_usage() -> None:
    setup = Setup({"a": {"m": [Cut(("hello", " brave"), interrupted()), REPLY]}}, [model("m", fallbacks=("f",))])

    events, error = await setup.stream("m")

    assert events == DELTAS[:2]  # no Finish: the error is the end
    assert isinstance(error, UpstreamUnavailable)
    assert error.reason == "UPSTREAM_STREAM_INTERRUPTED"
    assert error.metadata["partial_completion_tokens"] == "2"
    assert (error.metadata["model"], error.metadata["deployment"], error.metadata["provider"]) == ("m", "a/m", "a")
    assert setup.calls("a", "m") == 1


async def test_the_first_token_timeout_ends_a_silent_attempt_and_retries_it() -> None:
    timeouts = StreamTimeouts(first_token_s=0.05, idle_s=10.0)
    setup = Setup({"a": {"m": [Stall(), REPLY]}}, [model("m")], timeouts=timeouts)

    events, error = await setup.stream("m")

    assert error is None
    assert events[:-1] == DELTAS
    assert setup.calls("a", "m") == 2
    assert setup.providers["a"].closed == 2  # the stalled upstream request was closed


async def test_the_idle_timeout_ends_a_stream_that_stalls_after_its_first_token() -> None:
    timeouts = StreamTimeouts(first_token_s=10.0, idle_s=0.08)
    setup = Setup({"a": {"m": [Stall(("hello",))]}}, [model("m")], timeouts=timeouts)
    loop = asyncio.get_running_loop()

    started = loop.time()
    events, error = await setup.stream("m")
    elapsed = loop.time() - started

    assert events == [TextDelta("hello")]
    assert isinstance(error, UpstreamUnavailable)
    assert (error.reason, error.metadata["phase"], error.metadata["timeout_s"]) == (
        "UPSTREAM_STREAM_IDLE",
        "between tokens",
        "0.08",
    )
    assert error.metadata["partial_completion_tokens"] == "1"
    assert elapsed >= 0.08  # never early; the upstream stalls for good, so only the idle timer ended it
    assert setup.providers["a"].closed == 1


async def test_a_slow_client_is_not_mistaken_for_an_idle_upstream() -> None:
    timeouts = StreamTimeouts(first_token_s=10.0, idle_s=0.04)
    setup = Setup({"a": {"m": [REPLY]}}, [model("m")], timeouts=timeouts)

    events: list[StreamEvent] = []
    async with aclosing(setup.router.stream(setup.model("m"), chat())) as stream:
        async for event in stream:
            events.append(event)
            await asyncio.sleep(0.1)  # the client takes longer than the idle timeout for each event

    assert events[:-1] == DELTAS
    finish_of(events)


async def test_a_cancelled_stream_is_not_an_idle_timeout() -> None:
    timeouts = StreamTimeouts(first_token_s=10.0, idle_s=5.0)
    setup = Setup({"a": {"m": [Stall(("hello",))]}}, [model("m")], timeouts=timeouts)

    streaming = asyncio.Event()

    async def consume() -> None:
        async with aclosing(setup.router.stream(setup.model("m"), chat())) as stream:
            async for _ in stream:
                streaming.set()

    task = asyncio.create_task(consume())
    await streaming.wait()  # the first token came; the upstream now stalls
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert setup.providers["a"].closed == 1
    assert setup.resilience.limits.in_flight == 0


async def test_a_cancelled_call_abandons_its_retry_wait() -> None:
    provider = ScriptedProvider("a", {"m": [unavailable(), REPLY]})
    waits: list[float] = []
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:  # a wait that only a cancel ends
        waits.append(seconds)
        waiting.set()
        await asyncio.get_running_loop().create_future()

    resilience = Resilience(retry=RetryPolicy(backoff_base_s=10.0, backoff_cap_s=10.0), rng=lambda: 1.0, sleep=sleep)
    router = Router(Catalog([model("m")], ["a"]), {"a": provider}, resilience=resilience)

    async def consume() -> None:
        async with aclosing(router.stream(model("m"), chat())) as stream:
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await waiting.wait()  # the first attempt failed; the call now waits 10 s
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [waited] = waits
    assert 0 < waited <= 10.0  # the backoff, less what the failed attempt took
    assert provider.calls("m") == 1
    assert resilience.limits.in_flight == 0


# --- deployments, fallbacks and error classes ------------------------------------------------------------


def two_deployments(*weights: float, fallbacks: tuple[str, ...] = ()) -> ModelConfig:
    deployments = tuple(Deployment(p, "m", weight=w) for p, w in zip("ab", weights, strict=True))
    return ModelConfig(name="m", deployments=deployments, fallbacks=fallbacks)


async def test_the_next_deployment_is_tried_at_once_before_any_fallback() -> None:
    scripts: Scripts = {"a": {"m": [unavailable()], "f": [REPLY]}, "b": {"m": [REPLY]}}
    setup = Setup(scripts, [two_deployments(1, 1, fallbacks=("f",)), model("f")])

    events, error = await setup.stream("m")

    assert error is None
    served = finish_of(events).served
    assert served is not None
    assert (served.model, served.provider, served.deployment) == ("m", "b", "b/m")
    assert setup.time.sleeps == []  # another deployment needs no backoff
    assert setup.calls("a", "f") == 0


async def test_a_weight_0_deployment_is_a_standby_tried_last() -> None:
    scripts: Scripts = {"a": {"m": [unavailable()]}, "b": {"m": [REPLY]}}
    setup = Setup(scripts, [two_deployments(1, 0)], retry=RetryPolicy(max_attempts=2))

    _, error = await setup.stream("m")

    assert error is None
    assert (setup.calls("a", "m"), setup.calls("b", "m")) == (1, 1)


async def test_the_fallback_serves_after_the_models_attempts_and_the_final_event_names_it() -> None:
    setup = Setup({"a": {"m": [unavailable()], "f": [REPLY]}}, [model("m", fallbacks=("f",)), model("f")])

    events, error = await setup.stream("m")

    assert error is None
    served = finish_of(events).served
    assert served is not None
    assert (served.model, served.deployment) == ("f", "a/f")
    assert (setup.calls("a", "m"), setup.calls("a", "f")) == (3, 1)


@pytest.mark.parametrize(
    ("failure", "served_by"),
    [(rate_limited(None), "cheaper"), (unavailable(), "elsewhere")],
    ids=["rate_limited", "unavailable"],
)
async def test_fallback_chains_per_error_class(failure: UpstreamError, served_by: str) -> None:
    primary = model(
        "m",
        fallbacks=("elsewhere",),
        fallbacks_by_class=(("rate_limited", ("cheaper",)),),
    )
    scripts: Scripts = {"a": {"m": [failure], "cheaper": [REPLY], "elsewhere": [REPLY]}}
    setup = Setup(scripts, [primary, model("cheaper"), model("elsewhere")], retry=RetryPolicy(max_attempts=1))

    events, error = await setup.stream("m")

    assert error is None
    served = finish_of(events).served
    assert served is not None
    assert served.model == served_by


async def test_generate_retries_and_falls_back_the_same_way() -> None:
    setup = Setup(
        {"a": {"m": [unavailable(), Cut((), interrupted())], "f": [REPLY]}}, [model("m", fallbacks=("f",)), model("f")]
    )

    completion = await setup.complete("m")

    assert isinstance(completion, Completion)
    assert completion.text == "hello brave world"
    assert completion.served is not None
    assert completion.served.model == "f"
    assert (setup.calls("a", "m"), setup.calls("a", "f")) == (3, 1)


# --- the retry budget -------------------------------------------------------------------------------------


async def test_the_retry_budget_stops_retries_when_it_is_spent() -> None:
    retry = RetryPolicy(max_attempts=3, budget_ratio=0.0, budget_reserve=2.0)
    setup = Setup({"a": {"m": [unavailable()]}}, [model("m")], retry=retry)

    _, first = await setup.stream("m")
    _, second = await setup.stream("m")

    assert first is not None
    assert second is not None
    assert first.metadata["retry_stopped_by"] == "max_attempts"  # 2 retries: the whole reserve
    assert (second.metadata["attempts"], second.metadata["retry_stopped_by"]) == ("1", "retry_budget")
    assert setup.calls("a", "m") == 4


async def test_the_budget_grows_by_its_ratio_of_first_attempts() -> None:
    retry = RetryPolicy(max_attempts=2, budget_ratio=0.25, budget_reserve=0.0)
    setup = Setup({"a": {"m": [unavailable()]}}, [model("m")], retry=retry)

    for _ in range(8):
        await setup.stream("m")

    # 8 first attempts earn 8 * 0.25 = 2 retries (the bucket starts empty and holds at most one).
    assert setup.calls("a", "m") == 8 + 2


# --- circuit breakers -----------------------------------------------------------------------------------


async def test_an_open_breaker_fails_fast_to_the_fallback_and_lets_a_probe_through_after_the_cooldown() -> None:
    breaker = BreakerPolicy(consecutive_failures=2, cooldown_s=30.0)
    scripts: Scripts = {"a": {"m": [unavailable(), unavailable(), REPLY], "f": [REPLY]}}
    models = [model("m", fallbacks=("f",)), model("f")]
    setup = Setup(scripts, models, retry=RetryPolicy(max_attempts=1), breaker=breaker)

    for _ in range(2):
        await setup.stream("m")  # two failures in a row: the breaker of a/m opens
    assert setup.resilience.breaker(Deployment("a", "m")).state is BreakerState.OPEN

    events, error = await setup.stream("m")
    assert error is None
    assert setup.calls("a", "m") == 2  # not tried while open
    served = finish_of(events).served
    assert served is not None
    assert served.model == "f"

    setup.time.now += 30.0
    events, error = await setup.stream("m")  # the probe
    served = finish_of(events).served
    assert served is not None
    assert served.model == "m"
    assert setup.resilience.breaker(Deployment("a", "m")).state is BreakerState.CLOSED


async def test_failures_after_the_first_token_count_against_the_breaker_too() -> None:
    breaker = BreakerPolicy(failure_ratio=0.05, min_requests=4)
    setup = Setup({"a": {"m": [Cut(("hello",), interrupted())]}}, [model("m")], breaker=breaker)

    for _ in range(2):  # each: a first token (a success), then the cut (a failure)
        await setup.stream("m")

    assert setup.resilience.breaker(Deployment("a", "m")).state is BreakerState.OPEN


async def test_with_every_breaker_open_the_call_fails_fast_with_circuit_open() -> None:
    breaker = BreakerPolicy(consecutive_failures=1)
    setup = Setup({"a": {"m": [unavailable()]}}, [model("m")], retry=RetryPolicy(max_attempts=1), breaker=breaker)
    await setup.stream("m")

    events, error = await setup.stream("m")

    assert events == []
    assert isinstance(error, CircuitOpen)
    assert error.metadata["model"] == "m"
    assert setup.calls("a", "m") == 1


def refused(provider: str = "a") -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"cannot connect to upstream {provider} at 127.0.0.1:9: connection refused",
        provider=provider,
        metadata={"cause": "connection_refused", "upstream_address": "127.0.0.1:9"},
    )


async def test_a_call_counts_once_against_the_breaker_however_many_attempts_it_made() -> None:
    breaker = BreakerPolicy(consecutive_failures=3, cooldown_s=30.0)
    setup = Setup({"a": {"m": [refused()]}}, [model("m")], retry=RetryPolicy(max_attempts=3), breaker=breaker)
    state = setup.resilience.breaker(Deployment("a", "m"))

    errors = []
    for _ in range(3):
        _, error = await setup.stream("m")
        errors.append(error)
        if len(errors) < 3:
            assert state.state is BreakerState.CLOSED  # 3 attempts each, but one failing call
    assert state.state is BreakerState.OPEN

    # Every call reports the upstream's own error; the third's first failure opened the breaker, which
    # spared the upstream that call's retries.
    assert [
        (type(e), e.metadata["attempts"], e.metadata["retry_stopped_by"], e.metadata["cause"]) for e in errors if e
    ] == [
        (UpstreamUnavailable, "3", "max_attempts", "connection_refused"),
        (UpstreamUnavailable, "3", "max_attempts", "connection_refused"),
        (UpstreamUnavailable, "1", "circuit_open", "connection_refused"),
    ]
    assert setup.calls("a", "m") == 7


async def test_a_fallback_on_the_same_deployment_adds_no_second_failure_of_the_call() -> None:
    breaker = BreakerPolicy(consecutive_failures=2)
    scripts: Scripts = {"a": {"x": [refused()]}}
    models = [model("m", upstream="x", fallbacks=("f",)), model("f", upstream="x")]
    setup = Setup(scripts, models, retry=RetryPolicy(max_attempts=1), breaker=breaker)

    _, error = await setup.stream("m")

    assert isinstance(error, UpstreamUnavailable)
    assert setup.calls("a", "x") == 2  # the model and its fallback, one deployment
    assert setup.resilience.breaker(Deployment("a", "x")).state is BreakerState.CLOSED


async def test_circuit_open_says_what_the_breakers_last_failure_was_and_when_it_probes() -> None:
    breaker = BreakerPolicy(consecutive_failures=1, cooldown_s=30.0)
    setup = Setup({"a": {"m": [refused()]}}, [model("m")], retry=RetryPolicy(max_attempts=1), breaker=breaker)
    await setup.stream("m")
    setup.time.now += 10.0

    _, error = await setup.stream("m")

    assert isinstance(error, CircuitOpen)
    assert error.message == (
        "model m and its fallbacks are failing: every deployment's circuit is open (last failure of a/m: "
        "cannot connect to upstream a at 127.0.0.1:9: connection refused); retry in 20 s"
    )
    assert error.metadata == {
        "model": "m",
        "deployment": "a/m",
        "retry_in_s": "20",
        "last_error_reason": "UPSTREAM_UNAVAILABLE",
        "cause": "connection_refused",
        "upstream_address": "127.0.0.1:9",
    }


async def test_the_debug_line_of_a_failed_attempt_says_what_failed(caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup({"a": {"m": [refused()]}}, [model("m")], retry=RetryPolicy(max_attempts=1))
    with caplog.at_level("DEBUG", logger="server.routing.plan"):
        await setup.stream("m")
    assert caplog.messages == [
        "attempt 1 of m on a/m failed (UPSTREAM_UNAVAILABLE): cannot connect to upstream a at 127.0.0.1:9: "
        "connection refused"
    ]


async def test_the_breaker_says_what_it_last_saw_when_it_opens(caplog: pytest.LogCaptureFixture) -> None:
    breaker = BreakerPolicy(consecutive_failures=2, cooldown_s=30.0)
    setup = Setup({"a": {"m": [refused()]}}, [model("m")], retry=RetryPolicy(max_attempts=1), breaker=breaker)
    with caplog.at_level("WARNING", logger="server.resilience.breaker"):
        for _ in range(2):
            await setup.stream("m")
    assert caplog.messages == [
        "circuit of a/m opened: 2 failed calls in a row (last: cannot connect to upstream a at 127.0.0.1:9: "
        "connection refused); calls go elsewhere for 30 s"
    ]


async def test_a_timeout_at_the_clients_deadline_does_not_count_against_the_breaker() -> None:
    breaker = BreakerPolicy(consecutive_failures=1)
    setup = Setup({"a": {"m": [UpstreamTimeout("timed out", provider="a")]}}, [model("m")], breaker=breaker)

    _, error = await setup.stream("m", timeout_s=0.01)  # less than a retry needs: the deadline is the cause

    assert isinstance(error, UpstreamTimeout)
    assert error.metadata["retry_stopped_by"] == "deadline"
    assert setup.resilience.breaker(Deployment("a", "m")).state is BreakerState.CLOSED


# --- limits -------------------------------------------------------------------------------------------------


async def test_a_provider_at_its_limit_is_skipped_for_the_next_deployment() -> None:
    limits = UpstreamLimits(10, {"a": 0, "b": 5})
    setup = Setup({"a": {"m": [REPLY]}, "b": {"m": [REPLY]}}, [two_deployments(1, 1)], limits=limits)

    events, error = await setup.stream("m")

    assert error is None
    served = finish_of(events).served
    assert served is not None
    assert served.provider == "b"
    assert limits.in_flight == 0  # released at the end of the stream


async def test_over_the_process_limit_the_call_is_refused_at_once_with_retry_info() -> None:
    limits = UpstreamLimits(0, {})
    setup = Setup({"a": {"m": [REPLY]}}, [model("m")], limits=limits)

    events, error = await setup.stream("m")

    assert events == []
    assert isinstance(error, GatewayOverloaded)
    assert (error.reason, error.retry_after_s, error.metadata["limit"]) == ("GATEWAY_OVERLOADED", 1.0, "process")
    assert setup.calls("a", "m") == 0


async def test_a_slot_is_held_for_the_whole_stream() -> None:
    limits = UpstreamLimits(1, {})
    setup = Setup({"a": {"m": [REPLY]}}, [model("m")], limits=limits)

    async with aclosing(setup.router.stream(setup.model("m"), chat())) as stream:
        await anext(stream)
        assert limits.in_flight == 1
        _, refused = await setup.stream("m")
        assert isinstance(refused, GatewayOverloaded)
    assert limits.in_flight == 0


# --- resume: continue ---------------------------------------------------------------------------------------


async def test_resume_continues_on_the_fallback_as_one_stream_with_summed_usage() -> None:
    resumable = model("m", fallbacks=("f",), resume="continue")
    scripts: Scripts = {"a": {"m": [Cut(("hello", " brave"), interrupted())], "f": [Reply("world again")]}}
    setup = Setup(scripts, [resumable, model("f")])

    events, error = await setup.stream("m")

    assert error is None
    assert events[:-1] == [TextDelta("hello"), TextDelta(" brave"), TextDelta("world"), TextDelta(" again")]
    finish = finish_of(events)
    assert finish.resumed
    assert finish.usage == Usage(3, 2 + 2, 3 + 2 + 2, estimated=True)  # the resumed attempt's + the 2 streamed
    assert finish.served is not None
    assert finish.served.model == "f"
    resumed = setup.providers["a"].requests[-1]
    assert [(m.role, m.content) for m in resumed.messages[-2:]] == [
        (Role.ASSISTANT, "hello brave"),
        (Role.USER, CONTINUE_INSTRUCTION),
    ]


async def test_a_resume_that_fails_too_ends_with_the_error_and_every_streamed_token() -> None:
    resumable = model("m", fallbacks=("f",), resume="continue")
    scripts: Scripts = {"a": {"m": [Cut(("hello",), interrupted())], "f": [Cut((" brave",), interrupted())]}}
    setup = Setup(scripts, [resumable, model("f")])

    events, error = await setup.stream("m")

    assert events == [TextDelta("hello"), TextDelta(" brave")]
    assert error is not None
    assert error.metadata["partial_completion_tokens"] == "2"
    assert error.metadata["model"] == "f"


async def test_without_a_deployment_left_a_resume_gives_up_with_the_mid_stream_error() -> None:
    setup = Setup({"a": {"m": [Cut(("hello",), interrupted())]}}, [model("m", resume="continue")])

    events, error = await setup.stream("m")

    assert events == [TextDelta("hello")]
    assert error is not None
    assert (error.reason, error.metadata["partial_completion_tokens"]) == ("UPSTREAM_STREAM_INTERRUPTED", "1")
    assert error.metadata["retry_stopped_by"] == "failed_mid_stream"


def test_weighted_deployments_split_traffic_by_weight() -> None:
    canary = ModelConfig(
        name="gpt",
        deployments=(Deployment("main", "gpt-4.1", weight=95), Deployment("canary", "gpt-4.1", weight=5)),
    )
    rng = random.Random(1234)
    picks = Counter(pick(canary, rng.random).provider for _ in range(1000))
    assert 930 <= picks["main"] <= 970
    assert picks["main"] + picks["canary"] == 1000


def test_a_zero_weight_deployment_is_never_picked() -> None:
    model = ModelConfig(name="m", deployments=(Deployment("a", "x", weight=0), Deployment("b", "x", weight=1)))
    assert {pick(model, lambda: 0.0).provider for _ in range(10)} == {"b"}


def test_failover_order_is_the_pick_then_the_others_by_weight_standby_last() -> None:
    model = ModelConfig(
        name="m",
        deployments=(Deployment("a", "x", weight=0), Deployment("b", "x", weight=1), Deployment("c", "x", weight=3)),
    )
    assert [d.provider for d in failover_order(model, lambda: 0.0)] == ["b", "c", "a"]
    assert [d.provider for d in failover_order(model, lambda: 0.99)] == ["c", "b", "a"]
