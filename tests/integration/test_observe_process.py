"""End to end through a real `python -m server` process: a call that falls back is exported as spans to a
real OTLP receiver (a gRPC TraceService in this test), and its JSON log lines name its request id."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from generated import ai_service_pb2_grpc as pb_grpc
from server.defaults import GRACE_PERIOD_S
from tests.conftest import UPSTREAM_KEY
from tests.fakes.dead_upstreams import refused_port
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import run_gateway
from tests.rpc import collect_stream, request

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
CALLER = (("traceparent", f"00-{TRACE_ID}-10f067aa0ba902b7-01"), ("x-request-id", "e2e-1"))
# Guards against a hang only: the spans are awaited as an event.
EXPORT_TIMEOUT_S = 20.0


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span with its resource's service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self.server_span = asyncio.Event()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((service, span))
                    if span.kind == trace_pb2.Span.SPAN_KIND_SERVER:
                        self.server_span.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(0)


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        value = getattr(attribute.value, str(kind))
        values[attribute.key] = list(v.string_value for v in value.values) if kind == "array_value" else value
    return values


async def test_a_call_that_falls_back_reaches_an_otlp_receiver_and_its_json_logs_name_it(
    tmp_path: Path, fake_openai: FakeOpenAIUpstream, receiver: tuple[Receiver, int]
) -> None:
    collector, collector_port = receiver
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "log: {level: debug, format: json}\n"
        "retry: {max_attempts: 1}\n"
        "providers:\n"
        f"  - {{name: fake, kind: openai, base_url: '{fake_openai.base_url}', api_key_env: FAKE_KEY}}\n"
        "models:\n"
        "  - {name: primary, provider: fake, upstream_model: fault-503, fallbacks: [backup]}\n"
        "  - {name: backup, provider: fake, upstream_model: gpt-test}\n"
    )
    env = {
        "FAKE_KEY": UPSTREAM_KEY,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_SERVICE_NAME": "gateway-e2e",
    }
    async with run_gateway("--config", str(config), env=env) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            outcome = await collect_stream(
                pb_grpc.AIServiceStub(channel), request("primary", "one two"), metadata=CALLER
            )
        assert outcome.error is None
        assert "".join(outcome.deltas) == "one two"
        gateway.send_signal(signal.SIGTERM)  # the spans still buffered are sent on the way out
        await asyncio.wait_for(collector.server_span.wait(), EXPORT_TIMEOUT_S)
        assert await gateway.wait_exit() == 0
        log = gateway.stderr

    spans = [span for service, span in collector.spans if service == "gateway-e2e"]
    assert len(spans) == len(collector.spans) == 3
    [call] = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    attempts = sorted(
        (s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano
    )
    assert call.trace_id.hex() == TRACE_ID
    assert call.parent_span_id.hex() == "10f067aa0ba902b7"
    assert call.name == "holysheepai.AIService/StreamGenerate"
    assert [e.name for e in call.events] == ["fallback"]
    assert attributes(call)["gen_ai.request.model"] == "primary"
    assert attributes(call)["gen_ai.response.model"] == "backup"
    assert attributes(call)["gateway.request_id"] == "e2e-1"
    assert [a.name for a in attempts] == ["chat fault-503", "chat gpt-test"]
    assert {a.parent_span_id for a in attempts} == {call.span_id}
    assert [attributes(a)["gen_ai.provider.name"] for a in attempts] == ["openai", "openai"]
    assert attempts[0].status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert attributes(attempts[1])["gen_ai.usage.output_tokens"] == 2
    assert [r.headers["traceparent"].split("-")[2] for r in fake_openai.requests] == [a.span_id.hex() for a in attempts]

    # JSON logs: every line is an object; the call's lines name its request id; the access line has keys.
    entries = [json.loads(line) for line in log.splitlines()]
    of_call = [e for e in entries if e.get("request_id") == "e2e-1"]
    assert {e["logger"] for e in of_call} >= {"server.access", "server.routing.plan"}  # the failed attempt, at DEBUG
    [access] = [e for e in of_call if e["logger"] == "server.access"]
    assert (access["method"], access["code"], access["model"], access["served_model"]) == (
        "StreamGenerate",
        "OK",
        "primary",
        "backup",
    )
    assert (access["input_tokens"], access["output_tokens"], access["deltas"]) == (2, 2, 2)
    assert access["upstream_request_id"] == fake_openai.response_ids[-1]
    assert UPSTREAM_KEY not in log


async def test_an_unknown_trace_exporter_stops_the_gateway_at_start_with_status_2(tmp_path: Path) -> None:
    env = {"OTEL_TRACES_EXPORTER": "zipkin"}
    async with run_gateway("--listen", "127.0.0.1:0", env=env) as gateway:
        assert await gateway.wait_exit(EXPORT_TIMEOUT_S) == 2
        assert gateway.stderr.splitlines() == [
            "gateway: invalid configuration:",
            "OTEL_TRACES_EXPORTER: expected otlp, console or none, got 'zipkin'",
        ]


async def test_a_collector_that_is_down_delays_neither_calls_nor_the_exit(tmp_path: Path) -> None:
    async with (
        refused_port() as dead,
        run_gateway(
            "--listen",
            "127.0.0.1:0",
            env={
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": dead.removesuffix("/v1"),  # bound, not listening: refused
                "OTEL_EXPORTER_OTLP_TIMEOUT": "30",  # an export would wait this long for the collector
            },
        ) as gateway,
    ):
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            outcome = await collect_stream(pb_grpc.AIServiceStub(channel), request("demo", "one two"))
        assert "".join(outcome.deltas) == "one two"
        gateway.send_signal(signal.SIGTERM)
        # The grace period (10 s) bounds the drain; the spans still buffered get at most TRACE_FLUSH_TIMEOUT_S.
        assert await gateway.wait_exit(GRACE_PERIOD_S) == 0
