"""Tracing with the OpenTelemetry SDK (the `otel` extra): the spans trace.py draws, with the attributes of
the gRPC and GenAI semantic conventions.

    call span      rpc.system=grpc, rpc.service, rpc.method, rpc.grpc.status_code, error.type (the ErrorInfo
                   reason), gen_ai.operation.name=chat (Embed: embeddings, CountTokens: count_tokens),
                   gen_ai.request.model (as the client named it),
                   gen_ai.response.model (the catalog model that served), gen_ai.usage.input_tokens and
                   output_tokens, gen_ai.response.finish_reasons, gateway.request_id, gateway.client,
                   gateway.provider, gateway.deployment, gateway.upstream_request_id, gateway.ttft_ms
    attempt span   gen_ai.operation.name as its call's, gen_ai.provider.name (openai, anthropic, gcp.gemini),
                   gen_ai.request.model and gen_ai.response.model (the deployment's upstream model),
                   usage, finish reasons, gateway.attempt, gateway.deployment, gateway.upstream_request_id,
                   error.type when it failed
    events         "retry" (same model again) and "fallback" (another model), on the call span, each with
                   gateway.attempt, gateway.from_model, gateway.to_model and the error.type that led to it

The process has its own TracerProvider (the global one is left alone), exporting in batches from a
background thread; `shutdown` sends what is left when the gateway stops. It samples as
OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG say (default parentbased_always_on: every call whose
caller did not send an unsampled traceparent). A call the sampler leaves out costs one non-recording span
and nothing more: it takes the untraced path (no attempt spans, no attributes at its end) and passes its
unsampled trace context upstream, so the upstream leaves it out too; so do its InteractiveStream turns.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server import defaults
from server.errors import GatewayError, UpstreamError, code_number
from server.observe.record import CallRecord, log_value, operation_of
from server.observe.trace import TRACEPARENT, AttemptTrace, CallTrace, Metadata, Tracing
from server.types import Completion, Finish, Served, Usage

__all__ = ["OtelTracing", "otel_tracing", "sampler_from"]

SERVICE = "holysheepai.AIService"
DEFAULT_SERVICE_NAME = "holysheep-gateway"
# gen_ai.provider.name by provider kind (the conventions' well-known values).
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "demo": "demo"}
# Server-side codes that mark a span as an error (the gRPC semantic conventions).
_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_KEYS = ("traceparent", "tracestate")
# OTEL_TRACES_SAMPLER's standard values; the ratio ones take OTEL_TRACES_SAMPLER_ARG (default 1.0).
_SAMPLERS: dict[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}
_RATIO_SAMPLERS = {"traceidratio": TraceIdRatioBased, "parentbased_traceidratio": ParentBasedTraceIdRatio}


class OtelAttempt(AttemptTrace):
    __slots__ = ("_call", "_span", "model")

    def __init__(self, call: OtelCall, span: Span, model: str) -> None:
        super().__init__(_context_headers(span.get_span_context()))
        self._call, self._span, self.model = call, span, model

    def answered(self, reply: Finish | Completion) -> None:
        self._span.set_attributes(_reply_attributes(reply))

    def failed(self, error: GatewayError) -> None:
        self._call.last_error = error.reason
        attributes: dict[str, str | int] = {"error.type": error.reason}
        if isinstance(error, UpstreamError) and error.http_status is not None:
            attributes["http.response.status_code"] = error.http_status
        if upstream_id := error.metadata.get("upstream_request_id"):
            attributes["gateway.upstream_request_id"] = upstream_id
        self._span.set_attributes(attributes)
        self._span.set_status(Status(StatusCode.ERROR, error.reason))

    def end(self) -> None:
        self._span.end()


class OtelCall(CallTrace):
    __slots__ = ("_attempts", "_context", "_operation", "_span", "_tracer", "last_error")

    def __init__(self, tracer: trace.Tracer, span: Span, operation: str = "chat") -> None:
        super().__init__()
        self._tracer, self._span, self._operation = tracer, span, operation
        self._context = trace.set_span_in_context(span)
        self._attempts: list[str] = []  # the catalog model of each attempt so far
        self.last_error = ""

    @property
    def context(self) -> Context:
        return self._context

    def attempt(self, served: Served, upstream_model: str, provider_kind: str, number: int) -> AttemptTrace:
        if self._attempts:
            previous = self._attempts[-1]
            self._span.add_event(
                "retry" if previous == served.model else "fallback",
                {
                    "gateway.attempt": number,
                    "gateway.from_model": previous,
                    "gateway.to_model": served.model,
                    "error.type": self.last_error,
                },
            )
        self._attempts.append(served.model)
        span = self._tracer.start_span(
            f"{self._operation} {upstream_model}",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": self._operation,
                "gen_ai.provider.name": PROVIDER_NAMES.get(provider_kind, provider_kind),
                "gen_ai.request.model": upstream_model,
                "gen_ai.response.model": upstream_model,
                "gateway.attempt": number,
                "gateway.provider": served.provider,
                "gateway.deployment": served.deployment,
            },
        )
        return OtelAttempt(self, span, served.model)

    def end(self, record: CallRecord) -> None:
        span = self._span
        attributes: dict[str, str | int | float | list[str]] = {"rpc.grpc.status_code": code_number(record.code)}
        if record.client:
            attributes["gateway.client"] = record.client
        if record.served is not None:
            attributes["gen_ai.response.model"] = record.served.model
            attributes["gateway.provider"] = record.served.provider
            attributes["gateway.deployment"] = log_value(record.served.deployment)
        if record.first_token_s is not None:
            attributes["gateway.ttft_ms"] = round(record.first_token_s * 1000, 1)
        if record.upstream_request_id:
            attributes["gateway.upstream_request_id"] = record.upstream_request_id
        if record.turns is not None:
            attributes["gateway.turns"] = record.turns
        attributes.update(_usage_attributes(record.usage, record.finish_reason))
        if record.reason:
            attributes["error.type"] = record.reason
        span.set_attributes(attributes)
        if record.code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, record.reason or record.code))
        span.end()


class OtelTracing(Tracing):
    def __init__(self, tracer: trace.Tracer, provider: TracerProvider | None = None) -> None:
        self._tracer = tracer
        self._provider = provider

    def begin(self, record: CallRecord, parent: Metadata | CallTrace) -> CallTrace:
        if isinstance(parent, CallTrace) and not isinstance(parent, OtelCall):
            return parent  # a turn of a session that is not sampled: not sampled either
        attributes: dict[str, str] = {"gateway.request_id": record.request_id}
        operation = operation_of(record.method)
        if record.model:
            attributes["gen_ai.operation.name"] = operation
            attributes["gen_ai.request.model"] = log_value(record.model)
        if isinstance(parent, OtelCall):  # an InteractiveStream turn, inside its session's span
            attributes["gateway.session"] = record.session
            attributes["gateway.turn_request_id"] = log_value(record.turn_request_id)
            span = self._tracer.start_span(
                record.method, context=parent.context, kind=SpanKind.INTERNAL, attributes=attributes
            )
            return OtelCall(self._tracer, span, operation)
        span = self._tracer.start_span(
            f"{SERVICE}/{record.method}",
            context=_PROPAGATOR.extract(_trace_context(parent)),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": record.method, **attributes},
        )
        if not span.is_recording():
            # The sampler said no: the call gets the untraced path (no attempt spans, nothing at its end),
            # and passes the unsampled context on, so the upstream does not sample it either.
            return CallTrace(_traceparent(span.get_span_context()))
        return OtelCall(self._tracer, span, operation)

    def shutdown(self) -> None:
        """Send the spans still buffered, for at most TRACE_FLUSH_TIMEOUT_S: an export waits for a collector
        that is down until its own timeout (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s), and the SDK's flush ignores
        the time it is given, so it runs in a daemon thread that the process does not wait for."""
        if self._provider is not None:
            flush = threading.Thread(target=self._provider.shutdown, name="trace-flush", daemon=True)
            flush.start()
            flush.join(defaults.TRACE_FLUSH_TIMEOUT_S)


def otel_tracing(exporter_name: str, env: Mapping[str, str]) -> OtelTracing:
    """Tracing that exports with `exporter_name` (otlp: OTEL_EXPORTER_OTLP_* say where and how)."""
    service = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
    # No exit hook: `shutdown` bounds the flush; the SDK's own hook would wait for a collector that is down.
    provider = TracerProvider(resource=Resource.create(service), sampler=sampler_from(env), shutdown_on_exit=False)
    exporter: SpanExporter
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return OtelTracing(provider.get_tracer("holysheep-gateway"), provider)


def sampler_from(env: Mapping[str, str]) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name (default parentbased_always_on);
    ValueError for a name or a ratio the gateway does not take (the SDK would only log a warning)."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name in _SAMPLERS:
        return _SAMPLERS[name]
    if name not in _RATIO_SAMPLERS:
        known = ", ".join([*_SAMPLERS, *_RATIO_SAMPLERS])
        raise ValueError(f"OTEL_TRACES_SAMPLER: expected one of {known}, got {name!r}")
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {arg!r}")
    return _RATIO_SAMPLERS[name](ratio)


def _traceparent(context: SpanContext) -> str:
    """What TraceContextTextMapPropagator.inject writes, without a Context and a carrier to go through."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _context_headers(context: SpanContext) -> tuple[tuple[str, str], ...]:
    traceparent = (TRACEPARENT, _traceparent(context))
    if context.trace_state:
        return traceparent, ("tracestate", context.trace_state.to_header())
    return (traceparent,)


def _trace_context(metadata: Metadata) -> dict[str, str]:
    return {key: value for key, value in metadata if key in _CONTEXT_KEYS and isinstance(value, str)}


def _reply_attributes(reply: Finish | Completion) -> dict[str, str | int | list[str]]:
    attributes = _usage_attributes(reply.usage, reply.reason.name.lower())
    if reply.upstream_request_id:
        attributes["gateway.upstream_request_id"] = reply.upstream_request_id
    return attributes


def _usage_attributes(usage: Usage | None, finish_reason: str) -> dict[str, str | int | list[str]]:
    attributes: dict[str, str | int | list[str]] = {}
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [finish_reason]
    return attributes
