"""Traces through a real gateway, caught by an in-memory exporter: a span per call, turn and upstream attempt
with the GenAI attributes, retries and fallbacks as events, and the trace context carried upstream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import DEFAULT_OFF, DEFAULT_ON, Sampler
from opentelemetry.trace import SpanKind, StatusCode

from generated import ai_service_pb2 as pb
from server.app import Gateway, start_gateway
from server.config import GatewayConfig, ModelConfig
from server.observe.otel import OtelTracing, sampler_from
from server.observe.record import CallRecord
from server.observe.trace import CallTrace, Tracing, tracing_from_env
from server.resilience.retry import RetryPolicy
from server.types import Served
from tests.conftest import client_auth, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi
from tests.rpc import collect_stream, request, stub_for, unary_request

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"), ("x-request-id", "trace-me"))

UNSAMPLED_CALLER = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-00"), ("x-request-id", "skip-me"))
# A valid traceparent whose flags have the sampled bit clear (0x02, a random trace id, may be set).
UNSAMPLED = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[02]")

Start = Callable[[GatewayConfig], Awaitable[Gateway]]
StartSampled = Callable[[GatewayConfig, Sampler], Awaitable[Gateway]]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def start_sampled(exporter: InMemorySpanExporter) -> AsyncIterator[StartSampled]:
    started: list[Gateway] = []

    async def starting(config: GatewayConfig, sampler: Sampler) -> Gateway:
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        gateway = await start_gateway(config, tracing=OtelTracing(provider.get_tracer("test"), provider))
        started.append(gateway)
        return gateway

    yield starting
    for gateway in started:
        await gateway.stop(0)


@pytest.fixture
def start(start_sampled: StartSampled) -> Start:
    return lambda config: start_sampled(config, DEFAULT_ON)


def with_fallback(base_url: str) -> GatewayConfig:
    """`primary` always answers 503 (two attempts: one retry), then falls back to `backup`, which echoes."""
    config = openai_config(base_url, retry=RetryPolicy(max_attempts=2, backoff_base_s=0.001, backoff_cap_s=0.001))
    models = (
        ModelConfig(name="primary", provider="fake-openai", upstream_model="fault-503", fallbacks=("backup",)),
        ModelConfig(name="backup", provider="fake-openai", upstream_model="gpt-test"),
    )
    return replace(config, models=(*config.models, *models))


def spans_of(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in exporter.get_finished_spans() if s.kind == kind), key=lambda s: s.start_time or 0)


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str:
    assert span.parent is not None
    return f"{span.parent.span_id:016x}"


async def test_a_call_that_retries_and_falls_back_is_one_server_span_with_a_client_span_per_attempt(
    start: Start, fake_openai: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> None:
    gateway = await start(with_fallback(fake_openai.base_url))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("primary", "one two"), metadata=CALLER)

    assert outcome.error is None
    assert "".join(outcome.deltas) == "one two"
    [call] = spans_of(exporter, SpanKind.SERVER)
    assert call.name == "holysheepai.AIService/StreamGenerate"
    assert call.context is not None
    assert f"{call.context.trace_id:032x}" == TRACE_ID
    assert parent_id(call) == CALLER_SPAN, "the caller's span is the parent"
    assert call.status.status_code == StatusCode.UNSET
    assert dict(call.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "holysheepai.AIService",
        "rpc.method": "StreamGenerate",
        "rpc.grpc.status_code": 0,
        "gateway.request_id": "trace-me",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "primary",
        "gen_ai.response.model": "backup",
        "gen_ai.usage.input_tokens": 2,
        "gen_ai.usage.output_tokens": 2,
        "gen_ai.response.finish_reasons": ("stop",),
        "gateway.provider": "fake-openai",
        "gateway.deployment": "fake-openai/gpt-test",
        "gateway.ttft_ms": pytest.approx(call.attributes["gateway.ttft_ms"]),  # type: ignore[index]
        "gateway.upstream_request_id": fake_openai.response_ids[-1],
    }
    assert [(e.name, dict(e.attributes or {})) for e in call.events] == [
        (
            "retry",
            {
                "gateway.attempt": 2,
                "gateway.from_model": "primary",
                "gateway.to_model": "primary",
                "error.type": "UPSTREAM_UNAVAILABLE",
            },
        ),
        (
            "fallback",
            {
                "gateway.attempt": 3,
                "gateway.from_model": "primary",
                "gateway.to_model": "backup",
                "error.type": "UPSTREAM_UNAVAILABLE",
            },
        ),
    ]

    attempts = spans_of(exporter, SpanKind.CLIENT)
    assert [a.name for a in attempts] == ["chat fault-503", "chat fault-503", "chat gpt-test"]
    assert {parent_id(a) for a in attempts} == {span_id(call)}
    for number, attempt in enumerate(attempts, 1):
        attributes = attempt.attributes or {}
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gateway.attempt"] == number
    for failed, answer_id in zip(attempts[:2], fake_openai.response_ids[:2], strict=True):
        assert failed.status.status_code == StatusCode.ERROR
        attributes = failed.attributes or {}
        assert (attributes["error.type"], attributes["http.response.status_code"]) == ("UPSTREAM_UNAVAILABLE", 503)
        assert attributes["gateway.upstream_request_id"] == answer_id
    served = attempts[2].attributes or {}
    assert (served["gen_ai.usage.input_tokens"], served["gen_ai.usage.output_tokens"]) == (2, 2)
    assert served["gen_ai.response.finish_reasons"] == ("stop",)
    assert attempts[2].status.status_code == StatusCode.UNSET

    # Each upstream request carried its own attempt span as the parent, in the caller's trace.
    sent = [r.headers["traceparent"] for r in fake_openai.requests]
    assert sent == [f"00-{TRACE_ID}-{span_id(a)}-01" for a in attempts]
    assert {r.headers["x-request-id"] for r in fake_openai.requests} == {"trace-me"}


async def test_a_failed_unary_call_is_an_error_span_with_the_reason(
    start: Start, fake_openai: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> None:
    gateway = await start(openai_config(fake_openai.base_url))
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(unary_request("fault-401"), timeout=10)

    assert failed.value.code() == grpc.StatusCode.INTERNAL
    [call] = spans_of(exporter, SpanKind.SERVER)
    assert call.parent is None, "no traceparent: a new trace"
    assert call.status.status_code == StatusCode.ERROR
    attributes = call.attributes or {}
    assert (attributes["rpc.grpc.status_code"], attributes["error.type"]) == (13, "UPSTREAM_AUTH_FAILED")
    [attempt] = spans_of(exporter, SpanKind.CLIENT)
    assert (attempt.attributes or {})["http.response.status_code"] == 401


async def test_a_long_stream_is_two_spans_and_no_event_per_token(
    start: Start, fake_openai: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> None:
    config = openai_config(fake_openai.base_url)
    config = replace(config, models=(*config.models, ModelConfig(name="tokens-500", provider="fake-openai")))
    gateway = await start(config)
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("tokens-500"))

    assert "".join(outcome.deltas).split() == [f"t{i}" for i in range(500)]
    spans = exporter.get_finished_spans()
    assert sorted(s.kind.name for s in spans) == ["CLIENT", "SERVER"]
    assert all(not s.events for s in spans)


async def test_interactive_turns_are_spans_inside_the_session_with_their_attempts_inside_them(
    start: Start, fake_openai: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> None:
    gateway = await start(openai_config(fake_openai.base_url))
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub, metadata=CALLER)
        await bidi.start("gpt-test", mode=pb.SESSION_MODE_PIPELINE)
        await bidi.turn("r1", "one")
        await bidi.until_end_of("r1")
        await bidi.turn("r2", "two")
        await bidi.until_end_of("r2")
        assert (await bidi.finish()).code == grpc.StatusCode.OK

    [session] = spans_of(exporter, SpanKind.SERVER)
    assert session.name == "holysheepai.AIService/InteractiveStream"
    assert parent_id(session) == CALLER_SPAN
    assert (session.attributes or {})["gateway.turns"] == 2
    turns = spans_of(exporter, SpanKind.INTERNAL)
    assert [(t.name, (t.attributes or {})["gateway.turn_request_id"]) for t in turns] == [
        ("InteractiveStream.turn", "r1"),
        ("InteractiveStream.turn", "r2"),
    ]
    assert {parent_id(t) for t in turns} == {span_id(session)}
    attempts = spans_of(exporter, SpanKind.CLIENT)
    assert [parent_id(a) for a in attempts] == [span_id(t) for t in turns]
    assert [(t.attributes or {})["gen_ai.usage.output_tokens"] for t in turns] == [1, 1]


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        (f"00-{TRACE_ID}-{CALLER_SPAN}-01", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),
        (f"00-{'0' * 32}-{CALLER_SPAN}-01", None),  # an all-zero trace id is invalid
        ("not a traceparent", None),
        (None, None),
    ],
    ids=["valid", "zero-trace-id", "garbage", "missing"],
)
async def test_with_tracing_off_the_callers_valid_traceparent_goes_upstream_unchanged(
    make_gateway: Callable[[GatewayConfig], Awaitable[Gateway]],
    fake_openai: FakeOpenAIUpstream,
    sent: str | None,
    forwarded: str | None,
) -> None:
    gateway = await make_gateway(openai_config(fake_openai.base_url))
    assert type(gateway.tracing) is Tracing, "off unless OTEL_TRACES_EXPORTER asks"
    metadata = () if sent is None else (("traceparent", sent),)
    async with stub_for(gateway) as stub:
        await stub.Generate(unary_request("gpt-test"), metadata=metadata, timeout=10)

    assert fake_openai.requests[0].headers.get("traceparent") == forwarded


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, Tracing),
        ({"OTEL_TRACES_EXPORTER": "none"}, Tracing),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, Tracing),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, OtelTracing),
        ({"OTEL_TRACES_EXPORTER": "console"}, OtelTracing),
    ],
)
def test_tracing_follows_the_standard_variables(env: dict[str, str], kind: type[Tracing]) -> None:
    tracing = tracing_from_env(env)
    try:
        assert type(tracing) is kind
    finally:
        tracing.shutdown()


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER: expected otlp, console or none, got 'zipkin'"):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_a_call_refused_for_its_token_is_a_span_too(
    start: Start, fake_openai: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> None:
    gateway = await start(openai_config(fake_openai.base_url, auth=client_auth()))
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(unary_request("gpt-test"), metadata=(("authorization", "Bearer wrong"), *CALLER))

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [call] = exporter.get_finished_spans()
    assert (call.name, call.kind, parent_id(call)) == ("holysheepai.AIService/Generate", SpanKind.SERVER, CALLER_SPAN)
    attributes = call.attributes or {}
    assert (attributes["rpc.grpc.status_code"], attributes["error.type"]) == (16, "UNAUTHENTICATED")
    assert attributes["gateway.request_id"] == "trace-me"
    assert "wrong" not in str(attributes)
    assert fake_openai.requests == []


async def test_an_embed_call_is_a_server_span_with_an_embeddings_attempt_carrying_the_trace_upstream(
    start: Start, fake_openai: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> None:
    config = openai_config(fake_openai.base_url)
    embedder = ModelConfig(
        name="embedder", provider="fake-openai", upstream_model="embedder", capabilities=frozenset({"embeddings"})
    )
    gateway = await start(replace(config, models=(*config.models, embedder)))
    async with stub_for(gateway) as stub:
        await stub.Embed(pb.EmbedRequest(model="embedder", texts=["a"]), metadata=CALLER, timeout=10)

    [call] = spans_of(exporter, SpanKind.SERVER)
    [attempt] = spans_of(exporter, SpanKind.CLIENT)
    assert (call.name, (call.attributes or {})["gen_ai.operation.name"]) == (
        "holysheepai.AIService/Embed",
        "embeddings",
    )
    assert (attempt.name, (attempt.attributes or {})["gen_ai.operation.name"]) == ("embeddings embedder", "embeddings")
    assert parent_id(attempt) == span_id(call)
    [sent] = fake_openai.requests
    assert sent.headers["traceparent"].startswith(f"00-{TRACE_ID}-{span_id(attempt)}-")


@pytest.mark.parametrize(
    ("sampler", "metadata", "trace_id"),
    [
        (DEFAULT_ON, UNSAMPLED_CALLER, TRACE_ID),  # the caller did not sample it
        (DEFAULT_OFF, (), None),  # a new trace, and the sampler said no
    ],
    ids=["unsampled-caller", "root-not-sampled"],
)
async def test_a_call_the_sampler_leaves_out_records_no_span_and_tells_the_upstream(
    start_sampled: StartSampled,
    fake_openai: FakeOpenAIUpstream,
    exporter: InMemorySpanExporter,
    sampler: Sampler,
    metadata: tuple[tuple[str, str], ...],
    trace_id: str | None,
) -> None:
    gateway = await start_sampled(with_fallback(fake_openai.base_url), sampler)
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("primary", "one two"), metadata=metadata)

    assert outcome.error is None
    assert exporter.get_finished_spans() == ()
    # Every attempt (two on primary, one on backup) carries the same unsampled context upstream.
    [sent] = {r.headers["traceparent"] for r in fake_openai.requests}
    assert len(fake_openai.requests) == 3
    assert UNSAMPLED.fullmatch(sent)
    if trace_id is not None:
        assert sent.split("-")[1] == trace_id


async def test_the_turns_of_a_session_the_sampler_leaves_out_record_no_span_either(
    start: Start, fake_openai: FakeOpenAIUpstream, exporter: InMemorySpanExporter
) -> None:
    gateway = await start(openai_config(fake_openai.base_url))
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub, metadata=UNSAMPLED_CALLER)
        await bidi.start("gpt-test", mode=pb.SESSION_MODE_PIPELINE)
        await bidi.turn("r1", "one")
        await bidi.until_end_of("r1")
        assert (await bidi.finish()).code == grpc.StatusCode.OK

    assert exporter.get_finished_spans() == ()
    [sent] = [r.headers["traceparent"] for r in fake_openai.requests]
    assert sent.startswith(f"00-{TRACE_ID}-")
    assert sent.endswith("-00")


@pytest.mark.parametrize(
    ("env", "description"),
    [
        ({}, "ParentBased{root:AlwaysOnSampler,"),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "TraceIdRatioBased{0.25}"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, "ParentBased{root:TraceIdRatioBased{1.0},"),
        (
            {"OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            "ParentBased{root:TraceIdRatioBased{0.1},",
        ),
    ],
)
def test_the_sampler_follows_the_standard_variables(env: dict[str, str], description: str) -> None:
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "console", **env})
    try:
        assert isinstance(tracing, OtelTracing)
        assert sampler_from(env).get_description().startswith(description)
    finally:
        tracing.shutdown()


def test_at_ratio_zero_a_call_gets_the_untraced_path() -> None:
    tracing = tracing_from_env(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    )
    try:
        trace = tracing.begin(CallRecord("Generate", None, model="gpt-test"), ())
        assert type(trace) is CallTrace, "no recording span, no OtelCall"
        [(key, value)] = trace.attempt(Served("gpt-test", "up", "up/gpt-test"), "gpt-test", "openai", 1).headers
        assert key == "traceparent"
        assert UNSAMPLED.fullmatch(value)
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER: expected one of always_on, "),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "got '1.5'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "got 'half'"),
    ],
)
def test_a_sampler_the_gateway_does_not_know_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "console", **env})
