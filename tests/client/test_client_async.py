"""AsyncAIClient against real gateways: the demo model, the fake OpenAI upstream, TLS with bearer auth."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from client import (
    AIClient,
    AsyncAIClient,
    AsyncStream,
    AuthenticationError,
    DeadlineExceededError,
    FinishReason,
    InvalidArgumentError,
    Message,
    ModelDeployment,
    ModelInfo,
    RateLimitError,
    ReasoningDelta,
    SamplingOptions,
    StreamEnd,
    StreamEvent,
    TextDelta,
    UnavailableError,
    Usage,
)
from generated import ai_service_pb2 as pb
from tests.certs import CertFiles
from tests.conftest import CLIENT_TOKEN, ENDLESS
from tests.fakes.openai_upstream import FakeOpenAIUpstream

HELLO_DELTAS = [TextDelta("hello"), TextDelta(" brave"), TextDelta(" world")]
HELLO_END = StreamEnd("demo", "demo", FinishReason.STOP, Usage(3, 3, 6))


async def collect(client: AsyncAIClient, prompt: str, model: str) -> list[StreamEvent]:
    return [event async for event in client.stream_generate(prompt, model=model)]


async def test_generate_demo(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        result = await client.generate("hello brave world", model="demo")
    assert result.text == "hello brave world"
    assert (result.model, result.provider, result.finish_reason) == ("demo", "demo", FinishReason.STOP)
    assert result.finish_reason == "stop"
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6)


async def test_a_cache_breakpoint_and_the_cached_tokens_round_trip(demo_target: str) -> None:
    history = [Message("system", "the long handbook", cache=True), Message("user", "hello brave world")]
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        result = await client.generate(messages=history, model="demo")
    assert result.usage == Usage(6, 3, 9, cached_prompt_tokens=3)


async def test_reasoning_arrives_as_its_own_events_and_on_the_result(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        events = [
            e
            async for e in client.stream_generate(
                "hi there", model="demo", reasoning_effort="low", include_reasoning=True
            )
        ]
        result = await client.generate("hi there", model="demo", reasoning_budget=2000, include_reasoning=True)
        with pytest.raises(ValueError, match="reasoning_effort must be low, medium or high"):
            await client.generate("hi", model="demo", reasoning_effort="extreme")

    thoughts = [e.text for e in events if isinstance(e, ReasoningDelta)]
    assert thoughts == ["The", " user", " wrote:", " hi", " there"]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["hi", " there"]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.usage == Usage(2, 7, 9, reasoning_tokens=5)
    assert (result.text, result.reasoning, result.usage.reasoning_tokens) == ("hi there", "The user wrote: hi there", 5)


async def test_stream_demo_yields_exact_deltas_then_end(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        stream = client.stream_generate("hello brave world", model="demo")
        events = [event async for event in stream]
    assert events == [*HELLO_DELTAS, HELLO_END]
    assert stream.result == HELLO_END


async def test_sampling_options_object_and_keywords_reach_the_gateway(demo_target: str) -> None:
    sampling = SamplingOptions(max_tokens=2, stop=["zzz"])
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        capped = await client.generate("one two three four", model="demo", sampling=sampling)
        overridden = await client.generate("one two three four", model="demo", sampling=sampling, max_tokens=3)
        streamed = [e async for e in client.stream_generate("one two three four", model="demo", sampling=sampling)]
        async with client.interactive(model="demo", sampling=sampling) as session:
            turn = await session.send("one two three four")
            wider = await session.send("one two three four", max_tokens=3)
    assert (capped.text, capped.finish_reason) == ("one two", FinishReason.LENGTH)
    assert overridden.text == "one two three"
    assert streamed[:2] == [TextDelta("one"), TextDelta(" two")]
    assert (turn.text, wider.text) == ("one two", "one two three")


async def test_messages_accept_dataclass_protobuf_and_tuple(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        result = await client.generate(
            "hello brave world",
            model="demo",
            system="be brief",
            messages=[
                ("user", "first question"),
                Message("assistant", "an answer"),
                pb.Message(role="user", content="x"),
            ],
        )
    assert result.text == "hello brave world"  # the demo echoes the last user turn: the prompt
    assert result.usage.prompt_tokens == 2 + 2 + 2 + 1 + 3


@pytest.mark.parametrize(
    ("options", "text", "reason"),
    [
        ({"max_tokens": 2}, "hello brave", FinishReason.LENGTH),
        ({"stop": [" world"]}, "hello brave", FinishReason.STOP),
        ({"stop": " brave"}, "hello", FinishReason.STOP),  # a lone string is one stop sequence
        ({"temperature": 0.0, "top_p": 1.0}, "hello brave world", FinishReason.STOP),
    ],
)
async def test_sampling_options_reach_the_model(
    demo_target: str, options: dict[str, object], text: str, reason: FinishReason
) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        result = await client.generate("hello brave world", model="demo", **options)  # type: ignore[arg-type]
    assert (result.text, result.finish_reason) == (text, reason)


async def test_stream_through_openai_provider(openai_target: str) -> None:
    async with AsyncAIClient(target=openai_target, plaintext=True) as client:
        events = await collect(client, "one two three four", "gpt-test")
    # The fake writes the whole reply at once: the gateway may send it as fewer deltas (README, The contract).
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    assert "".join(e.text for e in events[:-1] if isinstance(e, TextDelta)) == "one two three four"
    assert events[-1] == StreamEnd("gpt-test", "fake-openai", FinishReason.STOP, Usage(4, 4, 8))


async def test_usage_the_upstream_did_not_report_is_marked_unreported(openai_target: str) -> None:
    async with AsyncAIClient(target=openai_target, plaintext=True) as client:
        events = await collect(client, "one two", "no-usage")
        result = await client.generate("one two", model="no-usage")
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.usage == Usage(0, 0, 0, unreported=True)
    assert result.usage.unreported


async def test_tls_with_bearer_token(secure_target: str, tls_files: CertFiles) -> None:
    async with AsyncAIClient(target=secure_target, token=CLIENT_TOKEN, ca_file=tls_files.ca_cert) as client:
        result = await client.generate("over tls", model="gpt-test")
        events = await collect(client, "over tls", "gpt-test")
    assert result.text == "over tls"
    assert "".join(e.text for e in events[:-1] if isinstance(e, TextDelta)) == "over tls"


@pytest.mark.parametrize("token", ["wrong-token", None])
async def test_bad_or_missing_token_is_unauthenticated(
    secure_target: str, tls_files: CertFiles, token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    async with AsyncAIClient(target=secure_target, token=token, ca_file=tls_files.ca_cert) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate("hi", model="gpt-test")
        with pytest.raises(AuthenticationError):
            await collect(client, "hi", "gpt-test")
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "UNAUTHENTICATED"


async def test_token_from_environment(
    secure_target: str, tls_files: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_TOKEN", CLIENT_TOKEN)
    monkeypatch.setenv("GATEWAY_TARGET", secure_target)
    async with AsyncAIClient(ca_file=tls_files.ca_cert) as client:
        assert (await client.generate("from env", model="gpt-test")).text == "from env"


async def test_invalid_request_lists_every_violation(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.generate(model="", temperature=5.0, max_tokens=0)
    error = caught.value
    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "gateway.holysheep.ai",
    )
    assert [field for field, _ in error.field_violations] == [
        "model",
        "messages",
        "config.temperature",
        "config.max_tokens",
    ]


async def test_unknown_model(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await collect(client, "hi", "no-such-model")
    assert caught.value.reason == "MODEL_NOT_FOUND"
    assert caught.value.metadata["model"] == "no-such-model"
    assert caught.value.field_violations[0][0] == "model"


async def test_rate_limit_carries_retry_after(openai_target: str) -> None:
    async with AsyncAIClient(target=openai_target, plaintext=True) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.generate("hi", model="fault-429")
    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == "UPSTREAM_RATE_LIMITED"
    assert caught.value.retry_after == 7.0
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


async def test_stream_failing_midway_keeps_deltas_then_raises(openai_target: str) -> None:
    received: list[StreamEvent] = []

    async def consume(stream: AsyncStream) -> None:
        async for event in stream:
            received.append(event)

    async with AsyncAIClient(target=openai_target, plaintext=True) as client:
        with pytest.raises(UnavailableError) as caught:
            await consume(client.stream_generate("alpha beta gamma delta", model="fault-reset-mid"))
    assert received == [TextDelta("alpha beta")]  # both pieces reached the gateway in one read
    assert caught.value.reason.startswith("UPSTREAM_")
    assert caught.value.metadata.get("deltas_sent") == "2"


async def test_client_deadline(openai_target: str) -> None:
    async with AsyncAIClient(target=openai_target, plaintext=True, timeout=0.3) as client:
        with pytest.raises(DeadlineExceededError):
            await collect(client, "hi", "fault-stall")


async def test_unreachable_gateway_is_unavailable() -> None:
    # A port bound but not listening: connecting is refused, and no other process can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with AsyncAIClient(target=f"127.0.0.1:{port}", plaintext=True, timeout=30) as client:
            with pytest.raises(UnavailableError) as caught:
                await client.generate("hi", model="demo")
    assert caught.value.reason == ""


SLOW_PROMPT = " ".join(f"w{i}" for i in range(40))  # "w0", then silence: only a cancel ends the stream


async def test_leaving_stream_block_cancels_upstream(openai_target: str, fake_openai: FakeOpenAIUpstream) -> None:
    async with AsyncAIClient(target=openai_target, plaintext=True) as client:
        async with client.stream_generate(SLOW_PROMPT, model=ENDLESS) as stream:
            async for event in stream:
                assert event == TextDelta("w0")
                break
        await fake_openai.wait_for_disconnect(model=ENDLESS)
        assert [event async for event in stream] == []  # a closed stream stays closed


async def test_break_without_block_cancels_upstream(openai_target: str, fake_openai: FakeOpenAIUpstream) -> None:
    async with AsyncAIClient(target=openai_target, plaintext=True) as client:
        async for _ in client.stream_generate(SLOW_PROMPT, model=ENDLESS):
            break  # the dropped stream cancels its call
        await fake_openai.wait_for_disconnect(model=ENDLESS)


async def test_task_cancellation_cancels_upstream(openai_target: str, fake_openai: FakeOpenAIUpstream) -> None:
    async with AsyncAIClient(target=openai_target, plaintext=True) as client:
        task = asyncio.create_task(collect(client, SLOW_PROMPT, ENDLESS))
        await fake_openai.wait_for_requests(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fake_openai.wait_for_disconnect(model=ENDLESS)


async def test_repr_hides_token(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, token=CLIENT_TOKEN, plaintext=True) as client:
        assert CLIENT_TOKEN not in repr(client)
        assert CLIENT_TOKEN not in str(client)
        assert "auth=bearer" in repr(client)


async def test_plaintext_to_remote_target_is_refused() -> None:
    with pytest.raises(ValueError, match="loopback"):
        AsyncAIClient(target="gateway.example.com:443", plaintext=True)


DEMO_MODEL = ModelInfo(
    name="demo",
    aliases=(),
    provider="demo",
    input_price_per_million=None,
    output_price_per_million=None,
    max_output_tokens=32000,
    deployments=(
        ModelDeployment(
            "demo/demo",
            "demo",
            "demo",
            1.0,
            ("embeddings", "json_object", "json_schema", "prompt_caching", "reasoning", "tools", "vision"),
        ),
    ),
    fallbacks=(),
    capabilities=("embeddings", "json_object", "json_schema", "prompt_caching", "reasoning", "tools", "vision"),
)


async def test_list_models_returns_the_catalog_as_client_types(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        assert await client.list_models() == [DEMO_MODEL]

    def blocking() -> list[ModelInfo]:
        with AIClient(target=demo_target, plaintext=True) as client:
            return client.list_models(timeout=30)

    assert await asyncio.to_thread(blocking) == [DEMO_MODEL]


async def test_list_models_needs_the_token(secure_target: str, tls_files: CertFiles) -> None:
    async with AsyncAIClient(target=secure_target, ca_file=tls_files.ca_cert) as client:
        with pytest.raises(AuthenticationError):
            await client.list_models()
    async with AsyncAIClient(target=secure_target, ca_file=tls_files.ca_cert, token=CLIENT_TOKEN) as client:
        assert "gpt-test" in [m.name for m in await client.list_models()]
