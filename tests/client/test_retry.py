"""Client retries against a scripted gRPC server: Generate retries UNAVAILABLE through the channel's
retryPolicy, both calls honour RetryInfo for RESOURCE_EXHAUSTED, streams retry only before their first
chunk, and no wait passes the deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import grpc
import pytest

from client import AIClient, AsyncAIClient, RateLimitError, TextDelta, UnavailableError
from client.errors import GatewayError, InvalidArgumentError
from client.retry import Retrier, RetryPolicy, channel_options
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.errors import (
    CircuitOpen,
    GatewayOverloaded,
    InvalidRequest,
    ShuttingDown,
    UpstreamRateLimited,
    UpstreamUnavailable,
    abort,
)
from server.errors import GatewayError as ServerError

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
OK = "ok"
AFTER_FIRST = "after-first"  # a stream that fails after its first chunk


def unavailable() -> ServerError:
    return ShuttingDown("going away")


def overloaded(after_s: float) -> ServerError:
    return GatewayOverloaded("too busy", retry_after_s=after_s)


class Scripted(pb_grpc.AIServiceServicer):
    """Each call plays the next step of the script: a gateway error, AFTER_FIRST, or OK (the default)."""

    def __init__(self, *steps: ServerError | str) -> None:
        self.steps = list(steps)
        self.times: list[float] = []

    def _step(self) -> ServerError | str:
        self.times.append(time.monotonic())
        return self.steps.pop(0) if self.steps else OK

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GenerateResponse:
        step = self._step()
        if isinstance(step, ServerError):
            await abort(context, step)
        return pb.GenerateResponse(content="hello", model="m")

    async def StreamGenerate(  # type: ignore[override]
        self, request: pb.StreamGenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        step = self._step()
        if isinstance(step, ServerError):
            await abort(context, step)
        await context.write(pb.StreamChunk(delta="hello"))
        if step == AFTER_FIRST:
            await abort(context, unavailable())
        await context.write(pb.StreamChunk(is_complete=True, model="m"))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListModelsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.EmbedResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.CountTokensResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    async def InteractiveStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.InteractiveRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")


Serve = Callable[[Scripted], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[grpc.aio.Server] = []

    async def start(servicer: Scripted) -> str:
        server = grpc.aio.server()
        pb_grpc.add_AIServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


async def generate(target: str, retry: RetryPolicy | None = FAST, timeout: float = 5.0) -> str:
    async with AsyncAIClient(target=target, plaintext=True, retry=retry) as client:
        return (await client.generate("hi", model="m", timeout=timeout)).text


async def stream(target: str, retry: RetryPolicy | None = FAST) -> list[str]:
    async with AsyncAIClient(target=target, plaintext=True, retry=retry) as client:
        return [e.text async for e in client.stream_generate("hi", model="m") if isinstance(e, TextDelta)]


# --- Generate ---------------------------------------------------------------------------------------------


async def test_generate_retries_unavailable_through_the_channel(serve: Serve) -> None:
    servicer = Scripted(unavailable(), unavailable())
    assert await generate(await serve(servicer)) == "hello"
    assert len(servicer.times) == 3


async def test_generate_stops_after_max_attempts(serve: Serve) -> None:
    servicer = Scripted(*[unavailable()] * 9)
    with pytest.raises(UnavailableError):
        await generate(await serve(servicer))
    assert len(servicer.times) == 5


async def test_retries_can_be_turned_off(serve: Serve) -> None:
    servicer = Scripted(unavailable())
    with pytest.raises(UnavailableError):
        await generate(await serve(servicer), retry=None)
    assert len(servicer.times) == 1


async def test_generate_waits_out_retry_info_on_resource_exhausted(serve: Serve) -> None:
    servicer = Scripted(overloaded(0.2))
    assert await generate(await serve(servicer)) == "hello"
    first, second = servicer.times
    assert second - first >= 0.2


@pytest.mark.parametrize(
    ("error", "timeout", "policy"),
    [
        # Longer than max_retry_delay_s (2 s): reported.
        (GatewayOverloaded("busy", retry_after_s=7.0), 30.0, FAST),
        # Within a raised cap, but it would pass the deadline: reported at once.
        (GatewayOverloaded("busy", retry_after_s=20.0), 10.0, replace(FAST, max_retry_delay_s=60.0)),
    ],
    ids=["delay-over-the-cap", "delay-past-the-deadline"],
)
async def test_resource_exhausted_is_reported_when_its_delay_is_too_long(
    serve: Serve, error: ServerError, timeout: float, policy: RetryPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float | None] = []
    decide = Retrier.delay

    def recorded(self: Retrier, error: GatewayError, *, unavailable: bool) -> float | None:
        delays.append(decide(self, error, unavailable=unavailable))
        return delays[-1]

    monkeypatch.setattr(Retrier, "delay", recorded)
    servicer = Scripted(error)
    with pytest.raises(RateLimitError) as raised:
        await generate(await serve(servicer), policy, timeout=timeout)
    assert raised.value.retry_after == error.retry_after_s
    assert len(servicer.times) == 1
    assert delays == [None]  # reported at once: the client decided against any wait


async def test_not_retried_without_retry_info_or_for_other_codes(serve: Serve) -> None:
    no_retry_info = GatewayOverloaded("busy", retry_after_s=0.1)
    no_retry_info.retry_after_s = None
    limited = Scripted(no_retry_info, InvalidRequest([]))
    target = await serve(limited)
    with pytest.raises(RateLimitError):
        await generate(target)
    with pytest.raises(InvalidArgumentError):
        await generate(target)
    assert len(limited.times) == 2


# --- What the gateway already retried -----------------------------------------------------------------------

RETRIED_BY_GATEWAY = [
    pytest.param(lambda: UpstreamUnavailable("cannot connect", provider="p"), UnavailableError, id="upstream-down"),
    pytest.param(lambda: CircuitOpen("every circuit is open"), UnavailableError, id="circuit-open"),
    pytest.param(
        lambda: UpstreamRateLimited("rate limited", provider="p", retry_after_s=0.05), RateLimitError, id="rate-limited"
    ),
]


@pytest.mark.parametrize(("make_error", "kind"), RETRIED_BY_GATEWAY)
async def test_generate_does_not_retry_what_the_gateway_already_retried(
    serve: Serve, make_error: Callable[[], ServerError], kind: type[GatewayError]
) -> None:
    servicer = Scripted(make_error(), make_error())
    with pytest.raises(kind) as raised:
        await generate(await serve(servicer))
    assert raised.value.metadata["client_retry"] == "no"
    assert len(servicer.times) == 1  # neither the channel's retryPolicy nor the client's loop tried again


@pytest.mark.parametrize(("make_error", "kind"), RETRIED_BY_GATEWAY)
async def test_a_stream_does_not_retry_what_the_gateway_already_retried(
    serve: Serve, make_error: Callable[[], ServerError], kind: type[GatewayError]
) -> None:
    servicer = Scripted(make_error(), make_error())
    with pytest.raises(kind):
        await stream(await serve(servicer))
    assert len(servicer.times) == 1


async def test_the_blocking_client_does_not_retry_what_the_gateway_already_retried(serve: Serve) -> None:
    servicer = Scripted(*(UpstreamUnavailable("down", provider="p") for _ in range(4)))
    target = await serve(servicer)

    def run() -> list[GatewayError]:
        errors: list[GatewayError] = []
        with AIClient(target=target, plaintext=True, retry=FAST) as client:
            for call in (
                lambda: client.generate("hi", model="m"),
                lambda: list(client.stream_generate("hi", model="m")),
            ):
                try:
                    call()
                except GatewayError as error:
                    errors.append(error)
        return errors

    errors = await asyncio.to_thread(run)
    assert [(type(e), e.metadata["client_retry"]) for e in errors] == [(UnavailableError, "no")] * 2
    assert len(servicer.times) == 2


async def test_the_channel_alone_honours_the_gateways_pushback(serve: Serve) -> None:
    """A plain stub with a retryPolicy (as any language's client may configure) stops at the trailer."""
    servicer = Scripted(UpstreamUnavailable("down", provider="p"), unavailable(), unavailable())
    target = await serve(servicer)
    options = channel_options((), FAST)
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.AIServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(pb.GenerateRequest(model="m"), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(servicer.times) == 1
        assert await stub.Generate(pb.GenerateRequest(model="m"), timeout=30)  # SHUTTING_DOWN twice: retried
    assert len(servicer.times) == 4


# --- StreamGenerate -----------------------------------------------------------------------------------------


async def test_a_stream_is_retried_before_its_first_chunk(serve: Serve) -> None:
    servicer = Scripted(unavailable(), overloaded(0.05))
    assert await stream(await serve(servicer)) == ["hello"]
    assert len(servicer.times) == 3


async def test_a_stream_is_never_retried_after_its_first_chunk(serve: Serve) -> None:
    servicer = Scripted(AFTER_FIRST)
    seen: list[str] = []

    async def read_all() -> None:
        async with AsyncAIClient(target=await serve(servicer), plaintext=True, retry=FAST) as client:
            async for event in client.stream_generate("hi", model="m"):
                assert isinstance(event, TextDelta)
                seen.append(event.text)

    with pytest.raises(UnavailableError):
        await read_all()
    assert seen == ["hello"]
    assert len(servicer.times) == 1


async def test_the_blocking_client_retries_the_same_way(serve: Serve) -> None:
    servicer = Scripted(unavailable(), overloaded(0.05), OK, unavailable(), AFTER_FIRST)
    target = await serve(servicer)

    def run() -> tuple[str, list[str], GatewayError | None]:
        with AIClient(target=target, plaintext=True, retry=FAST) as client:
            text = client.generate("hi", model="m").text  # UNAVAILABLE, then RESOURCE_EXHAUSTED: 3 calls
            seen: list[str] = []
            try:
                for event in client.stream_generate("hi", model="m"):  # UNAVAILABLE, then cut after one chunk
                    if isinstance(event, TextDelta):
                        seen.append(event.text)
            except GatewayError as error:
                return text, seen, error
            return text, seen, None

    text, seen, error = await asyncio.to_thread(run)
    assert text == "hello"
    assert seen == ["hello"]
    assert isinstance(error, UnavailableError)
    assert len(servicer.times) == 5


# --- the parts --------------------------------------------------------------------------------------------------


def test_the_service_config_retries_only_unavailable_on_generate() -> None:
    options = dict(channel_options([("grpc.primary_user_agent", "x")], RetryPolicy()))
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.primary_user_agent"] == "x"
    [method] = json.loads(options["grpc.service_config"])["methodConfig"]
    assert method["name"] == [{"service": "holysheepai.AIService", "method": "Generate"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 5,
        "initialBackoff": "0.1s",
        "maxBackoff": "1.0s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert "hedgingPolicy" not in method


def test_a_callers_own_service_config_or_no_policy_leaves_the_options_alone() -> None:
    own = (("grpc.service_config", "{}"),)
    assert channel_options(own, RetryPolicy()) == own
    assert channel_options((), None) == ()


def test_the_retrier_backs_off_exponentially_and_never_past_the_deadline() -> None:
    now = [0.0]
    retrier = Retrier(RetryPolicy(max_attempts=4), 10.0, clock=lambda: now[0], rng=lambda: 1.0)
    down = GatewayError(grpc.StatusCode.UNAVAILABLE, "down")
    assert [retrier.delay(down, unavailable=True) for _ in range(4)] == [0.1, 0.2, 0.4, None]

    late = Retrier(RetryPolicy(), 1.0, clock=lambda: now[0], rng=lambda: 1.0)
    busy = GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", retry_after=0.5)
    assert late.delay(busy, unavailable=False) == 0.5
    now[0] = 0.6
    assert late.delay(busy, unavailable=False) is None  # 0.5 s would pass the deadline
    assert late.delay(down, unavailable=False) is None  # Generate leaves UNAVAILABLE to the channel
