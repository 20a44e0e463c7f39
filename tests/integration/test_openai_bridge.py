"""The bridge to an OpenAI-compatible upstream, through a real gateway and a real fake upstream.

Every upstream fault is pinned for both RPCs: the exact status code, the ErrorInfo reason and metadata,
RetryInfo where it applies, what the client received before the error, and that no secret leaked. Retries
are off in the conftest gateways, so each fault maps from exactly one upstream attempt;
tests/integration/test_chaos.py pins what retries, fallbacks and breakers make of the same faults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.defaults import ERROR_DOMAIN
from tests.conftest import ENDLESS, UPSTREAM_KEY, GatewayFactory, openai_config
from tests.fakes.openai_upstream import FAKE_401_KEY, FakeOpenAIUpstream
from tests.rpc import collect_stream, detail, error_info, request, rich_status, stub_for, unary_request

pytestmark = pytest.mark.asyncio

Code = grpc.StatusCode


async def test_stream_relays_every_delta_then_one_final_chunk(openai_gateway: Gateway) -> None:
    async with stub_for(openai_gateway) as stub:
        outcome = await collect_stream(stub, request("gpt-test", "the quick brown fox"))

    assert outcome.error is None
    assert "".join(outcome.deltas) == "the quick brown fox"
    assert len(outcome.finals) == 1
    assert outcome.chunks[-1] is outcome.finals[0]
    final = outcome.finals[0]
    assert final.delta == ""
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (4, 4, 8)
    assert not final.usage.unreported
    assert (final.model, final.provider) == ("gpt-test", "fake-openai")


async def test_stream_sends_the_openai_streaming_request(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    req = pb.StreamGenerateRequest(
        model="gpt-test",
        messages=[
            pb.Message(role="system", content="be brief"),
            pb.Message(role="user", content="hi", name="alice"),
            pb.Message(role="assistant", content="hello"),
            pb.Message(role="user", content="and now?"),
        ],
        config=pb.GenerationConfig(temperature=0, max_tokens=50, top_p=0.5, stop=["END", "STOP"]),
    )
    async with stub_for(openai_gateway) as stub:
        outcome = await collect_stream(stub, req)
    assert outcome.error is None

    [sent] = fake_openai.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "alice"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and now?"},
        ],
        # An explicit 0 is sent (optional fields tell 0 from unset); unset options are left out.
        "temperature": 0.0,
        "top_p": 0.5,
        "max_tokens": 50,
        "stop": ["END", "STOP"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_unset_options_are_not_sent(openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream) -> None:
    async with stub_for(openai_gateway) as stub:
        await stub.Generate(unary_request("gpt-test"), timeout=30)
    [sent] = fake_openai.requests
    assert set(sent.body) == {"model", "messages"}


async def test_generate_makes_one_non_streaming_call(openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream) -> None:
    async with stub_for(openai_gateway) as stub:
        response = await stub.Generate(unary_request("gpt-test", "one two three", max_tokens=2), timeout=30)

    assert response.content == "one two"
    assert response.finish_reason == pb.FINISH_REASON_LENGTH
    assert (response.model, response.provider) == ("gpt-test", "fake-openai")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (3, 2, 5)
    [sent] = fake_openai.requests
    assert "stream" not in sent.body


async def test_a_stream_split_into_single_bytes_arrives_whole(openai_gateway: Gateway) -> None:
    async with stub_for(openai_gateway) as stub:
        outcome = await collect_stream(stub, request("split-bytes", "naïve café — ok"))
    assert outcome.error is None
    assert "".join(outcome.deltas) == "naïve café — ok"
    assert len(outcome.finals) == 1


async def test_missing_usage_is_reported_as_unreported_not_as_zeros(openai_gateway: Gateway) -> None:
    async with stub_for(openai_gateway) as stub:
        outcome = await collect_stream(stub, request("no-usage"))
        response = await stub.Generate(unary_request("no-usage"), timeout=30)
    assert outcome.finals[0].usage.unreported
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.unreported


async def test_connections_to_the_upstream_are_pooled(openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream) -> None:
    async with stub_for(openai_gateway) as stub:
        for _ in range(5):
            assert (await collect_stream(stub, request("gpt-test"))).error is None
    assert fake_openai.connections_accepted == 1


@dataclass(frozen=True)
class Fault:
    """What a client sees when the upstream misbehaves in one way."""

    model: str
    code: Code
    reason: str
    # Deltas a StreamGenerate client receives before the error.
    deltas_before: tuple[str, ...] = ()
    retry_after_s: float | None = None
    http_status: int | None = None
    # Where Generate (unary upstream call) differs from StreamGenerate.
    unary_reason: str | None = None


TWO_DELTAS = ("hello", " brave")
FAULTS = [
    Fault("fault-400", Code.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST", http_status=400),
    Fault("fault-401", Code.INTERNAL, "UPSTREAM_AUTH_FAILED", http_status=401),
    Fault("fault-403", Code.INTERNAL, "UPSTREAM_AUTH_FAILED", http_status=403),
    Fault("fault-408", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", http_status=408),
    Fault("fault-429", Code.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", retry_after_s=7.0, http_status=429),
    Fault("fault-429-ms", Code.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", retry_after_s=1.5, http_status=429),
    Fault("fault-429-no-retry-after", Code.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", http_status=429),
    Fault("fault-500", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", http_status=500),
    Fault("fault-502", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", http_status=502),
    Fault("fault-503", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", http_status=503),
    Fault("fault-reset-before", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    Fault(
        "fault-reset-mid",
        Code.UNAVAILABLE,
        "UPSTREAM_STREAM_INTERRUPTED",
        deltas_before=TWO_DELTAS,
        unary_reason="UPSTREAM_UNAVAILABLE",
    ),
    Fault(
        "fault-cut-mid",
        Code.UNAVAILABLE,
        "UPSTREAM_STREAM_INTERRUPTED",
        deltas_before=TWO_DELTAS,
        unary_reason="UPSTREAM_UNAVAILABLE",
    ),
    Fault("fault-inband-error-before", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    Fault("fault-inband-error-after", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", deltas_before=TWO_DELTAS),
    Fault("fault-inband-ratelimit-before", Code.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
    Fault("fault-inband-invalid-before", Code.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
    Fault("fault-malformed", Code.UNAVAILABLE, "UPSTREAM_BAD_RESPONSE"),
]


def assert_fault_status(error: grpc.aio.AioRpcError, fault: Fault, reason: str) -> None:
    assert error.code() == fault.code, error.details()
    info = error_info(error)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    assert info.metadata["provider"] == "fake-openai"
    assert (info.metadata["attempts"], info.metadata["model"]) == ("1", fault.model)
    if fault.http_status is not None:
        assert info.metadata["upstream_http_status"] == str(fault.http_status)
    retry = detail(rich_status(error), error_details_pb2.RetryInfo)
    if fault.retry_after_s is None:
        assert retry is None
    else:
        assert retry is not None
        assert retry.retry_delay.ToMilliseconds() == fault.retry_after_s * 1000
    # Nothing from the upstream's body, and no key, reaches the client.
    everything = f"{error.details()} {rich_status(error)}"
    for secret in (UPSTREAM_KEY, FAKE_401_KEY, "sk-"):
        assert secret not in everything
    assert error.code() != Code.UNKNOWN


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.model)
async def test_stream_fault(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with stub_for(openai_gateway) as stub:
        outcome = await collect_stream(stub, request(fault.model))

    assert len(fake_openai.requests) == 1
    assert outcome.error is not None, "a failed upstream must never end the stream with OK"
    assert "".join(outcome.deltas) == "".join(fault.deltas_before)  # in as many chunks as reads brought them
    assert outcome.finals == []
    assert_fault_status(outcome.error, fault, fault.reason)
    if fault.deltas_before:
        metadata = error_info(outcome.error).metadata
        assert metadata["deltas_sent"] == metadata["partial_completion_tokens"] == str(len(fault.deltas_before))
    assert UPSTREAM_KEY not in caplog.text
    assert FAKE_401_KEY not in caplog.text


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.model)
async def test_generate_fault(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with stub_for(openai_gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(unary_request(fault.model), timeout=10)

    assert len(fake_openai.requests) == 1
    assert_fault_status(raised.value, fault, fault.unary_reason or fault.reason)
    assert UPSTREAM_KEY not in caplog.text
    assert FAKE_401_KEY not in caplog.text


async def test_refused_connection_is_unavailable(make_gateway: GatewayFactory) -> None:
    # Nothing listens on the discard port of loopback in the test environment.
    gateway = await make_gateway(openai_config("http://127.0.0.1:9/v1"))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("gpt-test"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(unary_request("gpt-test"), timeout=30)
    for error in (outcome.error, raised.value):
        assert error is not None
        assert error.code() == Code.UNAVAILABLE
        assert error_info(error).reason == "UPSTREAM_UNAVAILABLE"
        assert "cannot connect" in (error.details() or "")
    assert outcome.chunks == []


# A stall after the headers, at the client's deadline: tests/integration/test_conformance.py, for every provider.


async def test_an_upstream_read_timeout_is_deadline_exceeded(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    from dataclasses import replace

    config = openai_config(fake_openai.base_url)
    slow = replace(config.providers[1], read_timeout_s=0.3)
    gateway = await make_gateway(replace(config, providers=(config.providers[0], slow)))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("fault-stall"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(unary_request("fault-stall"), timeout=10)
    for error in (outcome.error, raised.value):
        assert error is not None
        assert error.code() == Code.DEADLINE_EXCEEDED
        assert error_info(error).reason == "UPSTREAM_TIMEOUT"


async def test_client_cancel_closes_the_upstream_request(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with stub_for(openai_gateway) as stub:
        call = stub.StreamGenerate(request(ENDLESS, "one two three four five six seven eight"))
        first = await call.read()
        assert isinstance(first, pb.StreamChunk)
        assert first.delta == "one"
        call.cancel()
        disconnect = await fake_openai.wait_for_disconnect()  # the stream would not end by itself
    assert disconnect.model == ENDLESS
    assert len(fake_openai.disconnects) == 1
