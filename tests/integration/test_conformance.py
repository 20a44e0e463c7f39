"""One contract over three wire protocols: OpenAI-compatible, Anthropic and Gemini gateways behave alike.

Each test runs once per provider and transport: a real gateway in front of that provider's fake upstream,
whose models are named after the fakes' behaviours, calling it through aiohttp or httpx (the provider's
`transport`), which must not change what a client sees. The client must see the same sequence shape (the deltas,
then exactly one final chunk with usage, finish reason and cost) and, for the same upstream fault, the
same status code, ErrorInfo reason and RetryInfo, with nothing of the upstream's body or key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import TRANSPORTS, GatewayConfig, ModelConfig, ProviderConfig, TransportName
from server.defaults import ERROR_DOMAIN
from server.resilience.retry import RetryPolicy
from server.routing.catalog import Price
from server.types import Usage
from tests.conftest import ENDLESS, UPSTREAM_KEY, GatewayFactory
from tests.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.fakes.gemini_upstream import FakeGeminiUpstream
from tests.fakes.http_server import FakeHTTPServer
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.integration.test_openai_bridge import FAULTS as BRIDGE_FAULTS
from tests.integration.test_openai_bridge import Fault
from tests.rpc import collect_stream, detail, error_info, request, rich_status, stub_for, unary_request

Code = grpc.StatusCode

PROVIDERS = ("openai", "anthropic", "gemini")
FAKES: dict[str, type[FakeHTTPServer]] = {
    "openai": FakeOpenAIUpstream,
    "anthropic": FakeAnthropicUpstream,
    "gemini": FakeGeminiUpstream,
}
PRICE = Price(input_per_million=2.0, output_per_million=8.0)
# Phrases of the fakes' error bodies: none may reach a client.
UPSTREAM_PHRASES = ("organization", "quota", "x-api-key", "permission to use", "try again", "sk-")


@dataclass(frozen=True)
class Upstream:
    kind: str
    fake: FakeHTTPServer

    @property
    def provider(self) -> str:
        return f"fake-{self.kind}"


# The OpenAI bridge's fault table, which every provider must match, less what a wire protocol does not
# have (no 408 in either reference; Retry-After in milliseconds is OpenAI's, Gemini says 1.5 s in
# RetryInfo); then the faults that only some protocols have.
NOT_IN_PROTOCOL = {"anthropic": {"fault-408", "fault-429-ms"}, "gemini": {"fault-408"}}
ONLY_IN: list[tuple[tuple[str, ...], Fault]] = [
    (("anthropic", "gemini"), Fault("fault-404", Code.INTERNAL, "UPSTREAM_REQUEST_FAILED", http_status=404)),
    (("anthropic",), Fault("fault-413", Code.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST", http_status=413)),
    (("anthropic",), Fault("fault-529", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", http_status=529)),
    (("gemini",), Fault("fault-504", Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", http_status=504)),
]
FAULT_CASES = [
    *(
        pytest.param(kind, fault, id=f"{kind}-{fault.model}")
        for fault in BRIDGE_FAULTS
        for kind in PROVIDERS
        if fault.model not in NOT_IN_PROTOCOL.get(kind, ())
    ),
    *(pytest.param(kind, fault, id=f"{kind}-{fault.model}") for kinds, fault in ONLY_IN for kind in kinds),
]
MODELS = (
    "echo",
    "no-usage",
    "split-bytes",
    "refusal",
    ENDLESS,
    "fault-stall",
    *dict.fromkeys([fault.model for fault in BRIDGE_FAULTS] + [fault.model for _, fault in ONLY_IN]),
)


def conformance_config(kind: str, base_url: str, transport: TransportName = "aiohttp") -> GatewayConfig:
    """A gateway with one provider of `kind` at `base_url`, every fake behaviour as a priced model."""
    provider = ProviderConfig(
        name=f"fake-{kind}",
        kind=kind,  # type: ignore[arg-type]  # one of the config's provider kinds
        base_url=base_url,
        api_key_env="FAKE_KEY",
        api_key=UPSTREAM_KEY,
        transport=transport,
    )
    models = tuple(ModelConfig(name=m, provider=provider.name, upstream_model=m, price=PRICE) for m in MODELS)
    # One attempt per call: what is compared here is how each provider's answers map, not retries.
    return GatewayConfig(
        listen="127.0.0.1:0",
        providers=(provider,),
        models=models,
        grace_period_s=1.0,
        retry=RetryPolicy(max_attempts=1),
    )


@pytest.fixture(params=PROVIDERS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    kind: str = request.param
    async with FAKES[kind](api_key=UPSTREAM_KEY) as fake:
        yield Upstream(kind, fake)
        if isinstance(fake, FakeGeminiUpstream):
            assert fake.keys_in_url == 0, "the Gemini key must travel in x-goog-api-key, never in the URL"


@pytest.fixture(params=TRANSPORTS)
async def gateway(make_gateway: GatewayFactory, upstream: Upstream, request: pytest.FixtureRequest) -> Gateway:
    return await make_gateway(conformance_config(upstream.kind, upstream.fake.base_url, request.param))


def assert_final(final: pb.StreamChunk | pb.GenerateResponse, upstream: Upstream, usage: Usage) -> None:
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
    )
    assert not final.usage.unreported
    assert final.usage.HasField("cost_usd")
    assert final.usage.cost_usd == pytest.approx(PRICE.cost(usage))
    assert final.provider == upstream.provider


async def test_a_stream_is_the_deltas_then_one_final_chunk_with_usage_and_cost(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("echo", "hello brave world"))

    assert outcome.error is None
    # The deltas' text is the reply's; how it is split into chunks is the reads' (tests/integration/test_coalescing.py).
    assert "".join(outcome.deltas) == "hello brave world"
    assert len(outcome.finals) == 1
    final = outcome.chunks[-1]
    assert final is outcome.finals[0]
    assert final.delta == ""
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert final.model == "echo"
    assert_final(final, upstream, Usage(3, 3, 6))


async def test_generate_answers_whole_with_the_same_usage_and_cost(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        response = await stub.Generate(unary_request("echo", "hello brave world"), timeout=30)

    assert response.content == "hello brave world"
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert_final(response, upstream, Usage(3, 3, 6))


async def test_system_prompts_count_as_prompt_tokens(gateway: Gateway, upstream: Upstream) -> None:
    req = pb.StreamGenerateRequest(
        model="echo",
        messages=[pb.Message(role="system", content="be brief"), pb.Message(role="user", content="hi there")],
    )
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)
    assert "".join(outcome.deltas) == "hi there"
    assert_final(outcome.finals[0], upstream, Usage(4, 2, 6))


async def test_max_tokens_ends_the_reply_with_length(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("echo", "one two three", max_tokens=2))
        response = await stub.Generate(unary_request("echo", "one two three", max_tokens=2), timeout=30)

    assert "".join(outcome.deltas) == "one two"
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert_final(outcome.finals[0], upstream, Usage(3, 2, 5))
    assert (response.content, response.finish_reason) == ("one two", pb.FINISH_REASON_LENGTH)
    assert_final(response, upstream, Usage(3, 2, 5))


async def test_missing_usage_is_unreported_and_costs_nothing_invented(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("no-usage"))
        response = await stub.Generate(unary_request("no-usage"), timeout=30)

    assert "".join(outcome.deltas) == "hello brave world"
    for usage in (outcome.finals[0].usage, response.usage):
        assert usage.unreported
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (0, 0, 0)
        assert not usage.HasField("cost_usd")
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_STOP


async def test_a_stream_split_into_single_bytes_arrives_whole(gateway: Gateway, upstream: Upstream) -> None:
    # Every byte of the answer (headers, chunk framing, event lines, multi-byte UTF-8) in its own read.
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("split-bytes", "naïve café — ok"))
    assert outcome.error is None
    assert "".join(outcome.deltas) == "naïve café — ok"
    assert len(outcome.finals) == 1
    assert_final(outcome.finals[0], upstream, Usage(4, 4, 8))


async def test_connections_to_the_upstream_are_reused(gateway: Gateway, upstream: Upstream) -> None:
    # The body is read to its end after the last event, so each connection goes back to the pool.
    async with stub_for(gateway) as stub:
        for _ in range(3):
            assert (await collect_stream(stub, request("echo"))).error is None
            await stub.Generate(unary_request("echo"), timeout=30)
    assert upstream.fake.connections_accepted == 1


@pytest.mark.parametrize("upstream", ["anthropic", "gemini"], indirect=True)
async def test_a_refusal_ends_with_content_filter_and_no_text(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("refusal"))
        response = await stub.Generate(unary_request("refusal"), timeout=30)

    assert outcome.deltas == []
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert_final(outcome.finals[0], upstream, Usage(3, 0, 3))
    assert (response.content, response.finish_reason) == ("", pb.FINISH_REASON_CONTENT_FILTER)


async def test_client_cancel_closes_the_upstream_request(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        call = stub.StreamGenerate(request(ENDLESS, "one two three four five six seven eight"))
        first = await call.read()
        assert isinstance(first, pb.StreamChunk)
        assert first.delta == "one"
        call.cancel()
        disconnect = await upstream.fake.wait_for_disconnect()  # the stream would not end by itself
    assert disconnect.model == ENDLESS
    assert len(upstream.fake.disconnects) == 1


async def test_a_stall_ends_at_the_clients_deadline_and_closes_the_upstream(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with stub_for(gateway) as stub:
        # The gateway ends its upstream wait a margin before the deadline (10 %, at most 1 s) to answer first
        # with its details; at 10 s the margin is its largest, room for a loaded machine (0.5 s was not).
        outcome = await collect_stream(stub, request("fault-stall"), timeout=10.0)

    assert outcome.error is not None
    assert outcome.error.code() == Code.DEADLINE_EXCEEDED
    assert outcome.chunks == []
    info = error_info(outcome.error)
    assert (info.reason, info.metadata["phase"]) == ("UPSTREAM_TIMEOUT", "waiting for data")
    await upstream.fake.wait_for_disconnect()


def assert_fault_status(error: grpc.aio.AioRpcError, fault: Fault, reason: str, upstream: Upstream) -> None:
    assert error.code() == fault.code, error.details()
    info = error_info(error)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    assert info.metadata["provider"] == upstream.provider
    if fault.http_status is not None:
        assert info.metadata["upstream_http_status"] == str(fault.http_status)
    retry = detail(rich_status(error), error_details_pb2.RetryInfo)
    if fault.retry_after_s is None:
        assert retry is None
    else:
        assert retry is not None
        assert retry.retry_delay.ToMilliseconds() == fault.retry_after_s * 1000
    everything = f"{error.details()} {rich_status(error)}"
    assert UPSTREAM_KEY not in everything
    for phrase in UPSTREAM_PHRASES:
        assert phrase not in everything


@pytest.mark.parametrize(("upstream", "fault"), FAULT_CASES, indirect=["upstream"])
async def test_stream_fault(
    gateway: Gateway, upstream: Upstream, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request(fault.model))

    assert outcome.error is not None, "a failed upstream must never end the stream with OK"
    # The pieces before the fault reach the client (in as many chunks as the reads brought them); deltas_sent
    # counts the upstream's.
    assert "".join(outcome.deltas) == "".join(fault.deltas_before)
    assert outcome.finals == []
    assert_fault_status(outcome.error, fault, fault.reason, upstream)
    if fault.deltas_before:
        assert error_info(outcome.error).metadata["deltas_sent"] == str(len(fault.deltas_before))
    assert UPSTREAM_KEY not in caplog.text


@pytest.mark.parametrize(("upstream", "fault"), FAULT_CASES, indirect=["upstream"])
async def test_generate_fault(
    gateway: Gateway, upstream: Upstream, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(unary_request(fault.model), timeout=10)

    assert_fault_status(raised.value, fault, fault.unary_reason or fault.reason, upstream)
    assert UPSTREAM_KEY not in caplog.text
