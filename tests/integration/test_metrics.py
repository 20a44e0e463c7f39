"""The /metrics endpoint of a real gateway: after known calls, the counters and histograms say exactly
what happened, with the codes and reasons the clients received, and no label carries what a client typed.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_reflection.v1alpha import reflection_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from server.app import Gateway, start_gateway
from server.config import GatewayConfig, MetricsConfig, ModelConfig, Price, ProviderConfig
from server.observe.otel import OtelTracing
from server.resilience.retry import RetryPolicy
from tests.conftest import CLIENT_TOKEN, UPSTREAM_KEY, GatewayFactory, client_auth
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi
from tests.metrics import Scrape, wait_for_scrape
from tests.process import health_check, health_watch
from tests.rpc import collect_stream, error_info, request, stub_for, unary_request

pytestmark = pytest.mark.asyncio

PRICE = Price(input_per_million=1.0, output_per_million=2.0)


def fake(name: str, upstream: str, **fields: object) -> ModelConfig:
    return ModelConfig(name=name, provider="fake", upstream_model=upstream, **fields)  # type: ignore[arg-type]


def metrics_config(base_url: str, **overrides: object) -> GatewayConfig:
    """The fake upstream as provider "fake": `echo` answers, `flaky` always fails (503) and falls back to
    `echo`, `down` fails without a fallback. One attempt per model, so every count is exact."""
    provider = ProviderConfig(
        name="fake", kind="openai", base_url=base_url, api_key_env="FAKE_KEY", api_key=UPSTREAM_KEY
    )
    models = (
        fake("echo", "gpt-test", price=PRICE),
        fake("flaky", "fault-503", fallbacks=("echo",)),
        fake("down", "fault-503"),
    )
    config = GatewayConfig(
        listen="127.0.0.1:0",
        providers=(provider,),
        models=models,
        grace_period_s=1.0,
        retry=RetryPolicy(max_attempts=1),
        metrics=MetricsConfig(listen="127.0.0.1:0"),
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    return await make_gateway(metrics_config(fake_openai.base_url))


async def test_three_calls_with_one_fallback_are_counted_exactly(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        unary = await stub.Generate(unary_request("echo"), timeout=10)
        streamed = await collect_stream(stub, request("echo"))
        fell_back = await collect_stream(stub, request("flaky"))
    assert streamed.error is None
    assert fell_back.error is None
    assert fell_back.finals[0].model == "echo"
    scrape = await Scrape.of(gateway)

    # gRPC server metrics, go-grpc-prometheus names and labels.
    service = "holysheepai.AIService"
    unary_labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": "Generate"}
    stream_labels = {"grpc_type": "server_stream", "grpc_service": service, "grpc_method": "StreamGenerate"}
    assert scrape.value("grpc_server_started_total", **unary_labels) == 1
    assert scrape.value("grpc_server_started_total", **stream_labels) == 2
    assert scrape.value("grpc_server_handled_total", **unary_labels, grpc_code="OK") == 1
    assert scrape.value("grpc_server_handled_total", **stream_labels, grpc_code="OK") == 2
    assert scrape.value("grpc_server_handling_seconds_count", **stream_labels) == 2
    assert scrape.value("grpc_server_msg_received_total", **stream_labels) == 2
    assert scrape.value("grpc_server_msg_sent_total", **unary_labels) == 1
    chunks = len(streamed.chunks) + len(fell_back.chunks)
    assert scrape.value("grpc_server_msg_sent_total", **stream_labels) == chunks

    # The calls, the attempts, the one fallback, and no retry.
    assert scrape.value("gateway_calls_total", grpc_method="Generate", code="OK", reason="") == 1
    assert scrape.value("gateway_calls_total", grpc_method="StreamGenerate", code="OK", reason="") == 2
    assert scrape.value("gateway_calls_total", gen_ai_request_model="flaky") == 1
    assert scrape.value("gateway_fallbacks_total") == 1
    assert scrape.value("gateway_fallbacks_total", from_model="flaky", to_model="echo", error_class="unavailable") == 1
    assert scrape.value("gateway_upstream_retries_total") == 0
    assert scrape.value("gateway_upstream_attempts_total") == 4
    assert scrape.value("gateway_upstream_attempts_total", deployment="fake/fault-503", outcome="unavailable") == 1
    assert scrape.value("gateway_upstream_attempts_total", deployment="fake/gpt-test", outcome="ok") == 3
    assert scrape.value("gateway_calls_in_flight") == 0

    # GenAI histograms: one observation per call (TTFT per stream), labelled with who served.
    assert scrape.value("gen_ai_client_operation_duration_seconds_count") == 3
    served_by_fallback = {
        "gen_ai_request_model": "flaky",
        "gen_ai_response_model": "echo",
        "deployment": "fake/gpt-test",
    }
    assert scrape.value("gen_ai_client_operation_duration_seconds_count", **served_by_fallback, error_type="") == 1
    assert scrape.value("gen_ai_server_time_to_first_token_seconds_count") == 2
    assert scrape.value("gen_ai_server_time_to_first_token_seconds_count", gen_ai_provider_name="fake") == 2
    usages = [unary.usage, streamed.finals[0].usage, fell_back.finals[0].usage]
    assert scrape.value("gen_ai_client_token_usage_count", gen_ai_token_type="input") == 3
    assert scrape.value("gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(
        u.prompt_tokens for u in usages
    )
    assert scrape.value("gen_ai_client_token_usage_sum", gen_ai_token_type="output") == sum(
        u.completion_tokens for u in usages
    )
    assert scrape.value("gateway_tokens_total", client="anonymous", gen_ai_token_type="output") == sum(
        u.completion_tokens for u in usages
    )
    assert scrape.value("gateway_cost_usd_total", client="anonymous") == pytest.approx(sum(u.cost_usd for u in usages))
    assert sum(u.cost_usd for u in usages) > 0

    # Read when scraped: the breaker of the failing deployment is still closed after one failure, and
    # the provider's retry budget is there.
    assert scrape.value("gateway_circuit_breaker_state", deployment="fake/fault-503", state="closed") == 1
    assert scrape.value("gateway_circuit_breaker_state", deployment="fake/fault-503", state="open") == 0
    assert scrape.label_values("gateway_retry_budget_balance", "gen_ai_provider_name") == {"fake"}


@pytest.mark.parametrize(
    ("model", "code", "reason"),
    [
        ("down", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        ("no-such-model", grpc.StatusCode.INVALID_ARGUMENT, "MODEL_NOT_FOUND"),
    ],
)
async def test_a_failed_call_is_counted_with_the_code_and_reason_the_client_received(
    gateway: Gateway, model: str, code: grpc.StatusCode, reason: str
) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request(model))
    assert outcome.error is not None
    assert outcome.error.code() is code
    assert error_info(outcome.error).reason == reason
    scrape = await Scrape.of(gateway)
    requested = model if model == "down" else "unknown"
    calls = {"grpc_method": "StreamGenerate", "gen_ai_request_model": requested}
    assert scrape.value("gateway_calls_total", **calls, code=code.name, reason=reason) == 1
    assert scrape.value("gateway_calls_total") == 1
    go_code = {"UNAVAILABLE": "Unavailable", "INVALID_ARGUMENT": "InvalidArgument"}[code.name]
    assert scrape.value("grpc_server_handled_total", grpc_method="StreamGenerate", grpc_code=go_code) == 1
    duration = {"gen_ai_request_model": requested, "gen_ai_response_model": "", "error_type": reason}
    assert scrape.value("gen_ai_client_operation_duration_seconds_count", **duration) == 1
    assert scrape.value("gen_ai_server_time_to_first_token_seconds_count") == 0
    assert scrape.value("gateway_calls_in_flight") == 0


async def test_a_stream_that_fails_midway_counts_the_messages_its_client_received(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    """StreamGenerate counts its own writes (no counting context per token): they still reach the metric
    when the stream ends with an error after some tokens."""
    gateway = await make_gateway(metrics_config(fake_openai.base_url, models=(fake("cut", "fault-cut-mid"),)))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("cut"))
    assert outcome.error is not None
    assert outcome.error.code() is grpc.StatusCode.UNAVAILABLE
    assert outcome.chunks  # the content the upstream sent before it stopped (its two deltas may come as one)
    scrape = await Scrape.of(gateway)
    stream_labels = {"grpc_type": "server_stream", "grpc_method": "StreamGenerate"}
    assert scrape.value("grpc_server_handled_total", **stream_labels, grpc_code="Unavailable") == 1
    assert scrape.value("grpc_server_msg_sent_total", **stream_labels) == len(outcome.chunks)
    assert scrape.value("grpc_server_msg_received_total", **stream_labels) == 1


async def test_a_stream_its_client_cancels_counts_as_canceled_with_what_it_wrote(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    """StreamGenerate reports its writes in a `finally`: a client's cancellation still reaches the metric."""
    slow = fake("slow", "slow-tokens-200")  # 200 ms between tokens: the client cancels after the first
    gateway = await make_gateway(metrics_config(fake_openai.base_url, models=(slow,)))
    async with stub_for(gateway) as stub:
        call = stub.StreamGenerate(request("slow"), timeout=10)
        first = await anext(aiter(call))
        call.cancel()
    assert first.delta
    stream_labels = {"grpc_type": "server_stream", "grpc_method": "StreamGenerate"}
    scrape = await wait_for_scrape(gateway, "grpc_server_handled_total", **stream_labels)
    assert scrape.value("grpc_server_handled_total", **stream_labels, grpc_code="Canceled") == 1
    assert scrape.value("grpc_server_handled_total", **stream_labels) == 1
    assert scrape.value("grpc_server_msg_sent_total", **stream_labels) >= 1  # the first token, at least
    assert scrape.value("gateway_calls_total", grpc_method="StreamGenerate", code="CANCELLED") == 1


async def test_labels_never_carry_what_a_client_typed_or_a_token(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway = await make_gateway(metrics_config(fake_openai.base_url, auth=client_auth()))
    garbage = "garbage-model-\u2603-<script>"
    wrong_token = "sk-wrong-token-0123456789abcdef"
    async with stub_for(gateway) as stub:
        refused = await collect_stream(stub, request("echo"), metadata=(("authorization", f"Bearer {wrong_token}"),))
        unknown = await collect_stream(stub, request(garbage), metadata=(("authorization", f"Bearer {CLIENT_TOKEN}"),))
        passthrough = await collect_stream(
            stub, request("fake/" + garbage), metadata=(("authorization", f"Bearer {CLIENT_TOKEN}"),)
        )
    assert refused.error is not None
    assert refused.error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert unknown.error is not None
    assert unknown.error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert passthrough.error is None  # the fake upstream answers any model: "provider/anything" is served
    assert passthrough.finals[0].deployment == "fake/" + garbage
    scrape = await Scrape.of(gateway)
    for secret in (garbage, "garbage-model", wrong_token, CLIENT_TOKEN, UPSTREAM_KEY):
        assert secret not in scrape.text
    # The refused call never reached the servicer, but the gRPC metrics count it.
    assert scrape.value("grpc_server_handled_total", grpc_method="StreamGenerate", grpc_code="Unauthenticated") == 1
    assert scrape.value("gateway_calls_total", client="test-client", gen_ai_request_model="unknown") == 1
    assert scrape.value("gateway_calls_total", client="test-client", gen_ai_request_model="fake/*") == 1
    assert scrape.label_values("gateway_calls_total", "client") == {"test-client"}
    assert scrape.label_values("gateway_upstream_attempts_total", "deployment") == {"fake/*"}
    passed_through = {"gen_ai_request_model": "fake/*", "gen_ai_response_model": "fake/*", "deployment": "fake/*"}
    assert scrape.value("gen_ai_client_operation_duration_seconds_count", **passed_through) == 1
    assert scrape.label_values("gateway_circuit_breaker_state", "deployment") == set()


async def test_health_checks_and_reflection_are_counted(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        await health_check(channel)(HealthCheckRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_check(channel)(HealthCheckRequest(service="no-such-service"), timeout=10)
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            reflection_pb2.ServerReflectionRequest.SerializeToString,
            reflection_pb2.ServerReflectionResponse.FromString,
        )
        asked = [reflection_pb2.ServerReflectionRequest(list_services=""), reflection_pb2.ServerReflectionRequest()]
        answers = [answer async for answer in reflection(iter(asked), timeout=10)]
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    assert len(answers) == 2
    scrape = await Scrape.of(gateway)
    health = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert scrape.value("grpc_server_started_total", **health) == 2
    assert scrape.value("grpc_server_handled_total", **health, grpc_code="OK") == 1
    assert scrape.value("grpc_server_handled_total", **health, grpc_code="NotFound") == 1
    info = {"grpc_type": "bidi_stream", "grpc_method": "ServerReflectionInfo"}
    assert scrape.value("grpc_server_handled_total", **info, grpc_code="OK") == 1
    assert scrape.value("grpc_server_msg_received_total", **info) == 2
    assert scrape.value("grpc_server_msg_sent_total", **info) == 2


async def test_a_watch_cancelled_by_its_client_is_counted_as_canceled(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        watch = health_watch(channel)(HealthCheckRequest(), timeout=10)
        first = await anext(aiter(watch))
        watch.cancel()
    assert first.status == HealthCheckResponse.SERVING
    watched = {"grpc_type": "server_stream", "grpc_method": "Watch"}
    scrape = await wait_for_scrape(gateway, "grpc_server_handled_total", **watched)
    assert scrape.value("grpc_server_handled_total", **watched, grpc_code="Canceled") == 1
    assert scrape.value("grpc_server_msg_sent_total", **watched) == 1


async def test_interactive_sessions_and_turns(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("echo")
        await bidi.turn("1", "hello")
        await bidi.until_end_of("1")
        await bidi.turn("2", "again")
        await bidi.until_end_of("2")
        open_scrape = await Scrape.of(gateway)
        outcome = await bidi.finish()
    assert outcome.code is grpc.StatusCode.OK
    assert open_scrape.value("gateway_interactive_sessions") == 1
    assert open_scrape.value("gateway_interactive_turns_total", code="OK") == 2
    scrape = await Scrape.of(gateway)
    assert scrape.value("gateway_interactive_sessions") == 0
    assert scrape.value("gateway_calls_total", grpc_method="InteractiveStream", code="OK") == 1
    assert scrape.value("gateway_calls_total", grpc_method="InteractiveStream.turn", code="OK") == 2
    assert scrape.value("gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model="echo") == 2
    bidi_labels = {"grpc_type": "bidi_stream", "grpc_method": "InteractiveStream"}
    assert scrape.value("grpc_server_handled_total", **bidi_labels, grpc_code="OK") == 1
    assert scrape.value("grpc_server_msg_received_total", **bidi_labels) == 3  # start and two turns
    assert scrape.value("grpc_server_msg_sent_total", **bidi_labels) == len(bidi.seen)


async def test_metrics_are_off_unless_configured(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> None:
    gateway = await make_gateway(metrics_config(fake_openai.base_url, metrics=MetricsConfig()))
    assert gateway.metrics is None
    assert gateway.metrics_server is None


async def test_a_metrics_port_in_use_fails_the_start_saying_which_listener(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(metrics\.listen\): ") as failed:
            await make_gateway(metrics_config(fake_openai.base_url, metrics=MetricsConfig(listen=address)))
    assert address in str(failed.value)


async def test_the_access_log_line_the_metrics_and_the_trace_come_from_the_same_record(
    fake_openai: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(provider.get_tracer("test"), provider)
    caplog.set_level(logging.INFO, logger="server.access")
    gateway = await start_gateway(metrics_config(fake_openai.base_url), tracing=tracing)
    try:
        async with stub_for(gateway) as stub:
            outcome = await collect_stream(stub, request("echo"), metadata=(("x-request-id", "same-record"),))
        scrape = await Scrape.of(gateway)
    finally:
        await gateway.stop(0)
    assert outcome.error is None
    [record] = [r for r in caplog.records if r.name == "server.access"]
    fields = dict(field.split("=", 1) for field in record.getMessage().split()[1:])
    [span] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    attributes = {key: str(value) for key, value in (span.attributes or {}).items()}

    # The metrics and the log line: the same duration, TTFT, tokens and cost.
    duration_ms = scrape.value("gen_ai_client_operation_duration_seconds_sum") * 1000
    ttft_ms = scrape.value("gen_ai_server_time_to_first_token_seconds_sum") * 1000
    assert f"{duration_ms:.1f}" == fields["duration_ms"]
    assert f"{ttft_ms:.1f}" == fields["ttft_ms"]
    tokens = (
        scrape.value("gateway_tokens_total", gen_ai_token_type="input"),
        scrape.value("gateway_tokens_total", gen_ai_token_type="output"),
    )
    assert f"{tokens[0]:.0f}/{tokens[1]:.0f}" == fields["tokens"]
    assert f"{scrape.value('gateway_cost_usd_total'):.6f}" == fields["cost_usd"]
    # The trace and the log line: the same call, TTFT, tokens and served deployment.
    assert attributes["gateway.request_id"] == fields["request_id"] == "same-record"
    assert f"{float(attributes['gateway.ttft_ms']):.1f}" == fields["ttft_ms"]
    assert f"{attributes['gen_ai.usage.input_tokens']}/{attributes['gen_ai.usage.output_tokens']}" == fields["tokens"]
    assert f"{attributes['gateway.provider']}:{attributes['gateway.deployment']}" == fields["served"]
    assert attributes["rpc.grpc.status_code"] == "0"
    assert fields["code"] == "OK"
    assert scrape.value("gateway_calls_total", grpc_method="StreamGenerate", code="OK") == 1
