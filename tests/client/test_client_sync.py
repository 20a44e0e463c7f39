"""AIClient against real gateways. The gateways run in the test's event loop, so every blocking call runs
in a worker thread (`asyncio.to_thread`)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from client import (
    AIClient,
    AuthenticationError,
    FinishReason,
    GenerateResult,
    InvalidArgumentError,
    RateLimitError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    UnavailableError,
    Usage,
)
from tests.certs import CertFiles
from tests.conftest import CLIENT_TOKEN, ENDLESS
from tests.fakes.openai_upstream import FakeOpenAIUpstream

HELLO_EVENTS = [
    TextDelta("hello"),
    TextDelta(" brave"),
    TextDelta(" world"),
    StreamEnd("demo", "demo", FinishReason.STOP, Usage(3, 3, 6)),
]
SLOW_PROMPT = " ".join(f"w{i}" for i in range(40))  # "w0", then silence: only a cancel ends the stream


def generate(prompt: str, *, model: str, **options: object) -> GenerateResult:
    with AIClient(**options) as client:  # type: ignore[arg-type]
        return client.generate(prompt, model=model)


def stream(prompt: str, *, model: str, **options: object) -> list[StreamEvent]:
    with AIClient(**options) as client:  # type: ignore[arg-type]
        return list(client.stream_generate(prompt, model=model))


async def test_generate_demo(demo_target: str) -> None:
    result = await asyncio.to_thread(generate, "hello brave world", model="demo", target=demo_target, plaintext=True)
    assert result == GenerateResult("hello brave world", "demo", "demo", FinishReason.STOP, Usage(3, 3, 6))


async def test_stream_demo_yields_exact_deltas_then_end(demo_target: str) -> None:
    def run() -> tuple[list[StreamEvent], StreamEnd | None]:
        with (
            AIClient(target=demo_target, plaintext=True) as client,
            client.stream_generate("hello brave world", model="demo") as events,
        ):
            return list(events), events.result

    events, result = await asyncio.to_thread(run)
    assert events == HELLO_EVENTS
    assert result == HELLO_EVENTS[-1]


async def test_stream_through_openai_provider(openai_target: str) -> None:
    events = await asyncio.to_thread(stream, "one two", model="gpt-test", target=openai_target, plaintext=True)
    assert events == [  # the fake writes the whole reply at once: one delta (README, The contract)
        TextDelta("one two"),
        StreamEnd("gpt-test", "fake-openai", FinishReason.STOP, Usage(2, 2, 4)),
    ]


async def test_tls_with_bearer_token(secure_target: str, tls_files: CertFiles) -> None:
    options = {"target": secure_target, "token": CLIENT_TOKEN, "ca_file": tls_files.ca_cert}
    result = await asyncio.to_thread(generate, "over tls", model="gpt-test", **options)
    events = await asyncio.to_thread(stream, "over tls", model="gpt-test", **options)
    assert result.text == "over tls"
    assert "".join(e.text for e in events[:-1] if isinstance(e, TextDelta)) == "over tls"


@pytest.mark.parametrize("token", ["wrong-token", None])
async def test_bad_or_missing_token_is_unauthenticated(
    secure_target: str, tls_files: CertFiles, token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    options = {"target": secure_target, "token": token, "ca_file": tls_files.ca_cert}
    with pytest.raises(AuthenticationError) as caught:
        await asyncio.to_thread(generate, "hi", model="gpt-test", **options)
    with pytest.raises(AuthenticationError):
        await asyncio.to_thread(stream, "hi", model="gpt-test", **options)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED


async def test_invalid_request_lists_every_violation(demo_target: str) -> None:
    def run() -> None:
        with AIClient(target=demo_target, plaintext=True) as client:
            client.generate("hi", model="demo", temperature=-1.0, top_p=0.0, stop=["", "x"])

    with pytest.raises(InvalidArgumentError) as caught:
        await asyncio.to_thread(run)
    assert [field for field, _ in caught.value.field_violations] == [
        "config.temperature",
        "config.top_p",
        "config.stop[0]",
    ]


async def test_rate_limit_carries_retry_after(openai_target: str) -> None:
    with pytest.raises(RateLimitError) as caught:
        await asyncio.to_thread(stream, "hi", model="fault-429", target=openai_target, plaintext=True)
    assert (caught.value.reason, caught.value.retry_after) == ("UPSTREAM_RATE_LIMITED", 7.0)
    assert isinstance(caught.value.__cause__, grpc.RpcError)


async def test_stream_failing_midway_keeps_deltas_then_raises(openai_target: str) -> None:
    received: list[StreamEvent] = []

    def run() -> None:
        with AIClient(target=openai_target, plaintext=True) as client:
            for event in client.stream_generate("alpha beta gamma delta", model="fault-reset-mid"):
                received.append(event)

    with pytest.raises(UnavailableError) as caught:
        await asyncio.to_thread(run)
    assert received == [TextDelta("alpha beta")]  # both pieces reached the gateway in one read
    assert caught.value.metadata.get("deltas_sent") == "2"


@pytest.mark.parametrize("with_block", [True, False])
async def test_early_exit_cancels_upstream(
    openai_target: str, fake_openai: FakeOpenAIUpstream, with_block: bool
) -> None:
    def run() -> None:
        with AIClient(target=openai_target, plaintext=True) as client:
            if with_block:
                with client.stream_generate(SLOW_PROMPT, model=ENDLESS) as events:
                    next(events)
                assert list(events) == []  # a closed stream stays closed
            else:
                for _ in client.stream_generate(SLOW_PROMPT, model=ENDLESS):
                    break  # the dropped stream cancels its call

    await asyncio.to_thread(run)
    await fake_openai.wait_for_disconnect(model=ENDLESS)


async def test_repr_hides_token(secure_target: str, tls_files: CertFiles) -> None:
    client = AIClient(target=secure_target, token=CLIENT_TOKEN, ca_file=tls_files.ca_cert)
    with client:
        assert CLIENT_TOKEN not in repr(client)
        assert CLIENT_TOKEN not in str(client)
    assert (
        repr(client)
        == f"AIClient(target={secure_target!r}, tls, ca_file={str(tls_files.ca_cert)!r}, auth=bearer, timeout=60)"
    )


@pytest.mark.parametrize("target", ["10.0.0.1:50051", "gateway.example.com:443", "[2001:db8::1]:50051"])
def test_plaintext_to_remote_target_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        AIClient(target=target, plaintext=True)
