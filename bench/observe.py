"""python -m bench.observe [--calls N] [--rounds R]: what metrics and tracing add to each call, in one process.

Times, in CPU time of this process (threads included: the span processor's export thread counts), the
observe work of one finished 64-token StreamGenerate call, without the call itself:

    metrics              GatewayMetrics.begun + ended of its record (server/observe/metrics.py)
    scrape               rendering that registry once, as /metrics does
    metrics, workers     the same calls with prometheus-client's multiprocess (memory-mapped) values
    grpc metrics         the interceptor's start and end of one StreamGenerate RPC (grpc_metrics.py), which
                         counts its own writes (`messages_sent`)
    per message          what the counting context adds to one `write`, over gRPC's own, for a writing
                         method that does not count its own (health's Watch)
    tracing 1.0 / 0.1 / 0  the call span and its attempt span (server/observe/otel.py), exported in batches
                         and encoded as OTLP protobuf (the network left out), at those sampling ratios

Each round runs N calls back to back; the line shows the median round and the best, per call. A
micro-benchmark, not a test: on a busy machine the figures are high (cold caches), never low.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from prometheus_client import CollectorRegistry, generate_latest, values

from server.observe.grpc_metrics import (
    _COUNTED_BY_HANDLER,
    GrpcServerMetrics,
    _Call,
    _CountingContext,
    messages_sent,
)
from server.observe.lean import LEAN
from server.observe.metrics import GatewayMetrics, LabelBounds
from server.observe.otel import OtelTracing
from server.observe.record import CallRecord
from server.routing.catalog import Catalog, ModelConfig
from server.routing.plan import Resilience
from server.service import COUNTS_ITS_WRITES
from server.types import Served, Usage

__all__ = ["main"]

CATALOG = Catalog([ModelConfig(name="bench-64", provider="upstream", upstream_model="tokens-64")], ["upstream"], {})
SERVED = Served("bench-64", "upstream", "upstream/tokens-64")
METADATA = (("user-agent", "grpc-python"), ("x-request-id", "bench"))
MESSAGES = 65  # 64 deltas and the final chunk


def a_record() -> CallRecord:
    record = CallRecord("StreamGenerate", None, model="bench-64", request_id="bench")
    record.first_token_s, record.deltas = 0.01, 64
    record.served, record.usage, record.cost_usd, record.finish_reason = SERVED, Usage(12, 64, 76), 1e-4, "stop"
    record.duration_s = 0.2
    return record


def _round(calls: int, one: Callable[[], None]) -> float:
    start = time.process_time_ns()
    for _ in range(calls):
        one()
    return (time.process_time_ns() - start) / calls / 1000


def metrics_call(shared: bool = False) -> tuple[Callable[[], None], CollectorRegistry]:
    metrics = GatewayMetrics(LabelBounds(CATALOG, [], ["upstream"]), CollectorRegistry(), shared=shared)
    metrics.watch(Resilience())
    record = a_record()

    def one() -> None:
        metrics.begun(record)
        metrics.ended(record)

    return one, metrics.registry


@contextmanager
def multiprocess_values() -> Iterator[None]:
    """prometheus-client's multiprocess values, in a directory of its own, while the block runs."""
    with tempfile.TemporaryDirectory(prefix="bench-observe-") as directory:
        before, os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ.get("PROMETHEUS_MULTIPROC_DIR"), directory
        kept = values.ValueClass
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        try:
            yield
        finally:
            values.ValueClass = kept
            if before is None:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = before


class _Context:
    def code(self) -> None:
        return None

    def time_remaining(self) -> float:
        return 60.0

    async def write(self, message: object) -> None:
        pass


def grpc_call() -> Callable[[], None]:
    metrics = GrpcServerMetrics(CollectorRegistry(), LEAN, counted_by_handler=COUNTS_ITS_WRITES)
    method = metrics._method("server_stream", "holysheepai.AIService", "StreamGenerate")
    context = _Context()

    def one() -> None:  # as the interceptor's `writing` and the servicer's StreamGenerate do
        call = _Call(method, None, context, writes=True)
        reporting = _COUNTED_BY_HANDLER.set(call.tally)
        messages_sent(MESSAGES)
        _COUNTED_BY_HANDLER.reset(reporting)
        call.end(None)

    return one


def write_cost(calls: int) -> float:
    """Microseconds the counting context adds to one awaited `write` (of a stand-in for gRPC's own)."""

    async def writes(context: Any) -> float:
        start = time.process_time_ns()
        for _ in range(calls):
            await context.write(None)
        return (time.process_time_ns() - start) / calls / 1000

    call = _Call(GrpcServerMetrics(CollectorRegistry(), LEAN)._method("server_stream", "s", "m"), None, _Context())
    return asyncio.run(writes(_CountingContext(_Context(), call.tally))) - asyncio.run(writes(_Context()))


class _EncodingExporter(SpanExporter):
    """Encodes each batch as the OTLP exporter does, and sends it nowhere."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS


def tracing_call(ratio: float) -> tuple[Callable[[], None], TracerProvider]:
    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(ratio), shutdown_on_exit=False)
    # A queue that holds a round: the figure is the cost of every span, none dropped.
    provider.add_span_processor(BatchSpanProcessor(_EncodingExporter(), max_queue_size=1 << 20))
    tracing = OtelTracing(provider.get_tracer("bench"), provider)
    record = a_record()

    def one() -> None:
        trace = tracing.begin(record, METADATA)
        with trace.attempt(SERVED, "tokens-64", "openai", 1):
            pass
        trace.end(record)

    return one, provider


def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    one, registry = metrics_call()
    results["metrics"] = [_round(calls, one) for _ in range(rounds)]

    def scrape() -> None:
        generate_latest(registry)

    results["scrape"] = [_round(max(calls // 100, 1), scrape) for _ in range(rounds)]
    with multiprocess_values():
        one, _ = metrics_call(shared=True)
        results["metrics, workers"] = [_round(calls, one) for _ in range(rounds)]
    one = grpc_call()
    results["grpc metrics"] = [_round(calls, one) for _ in range(rounds)]
    results["per message"] = [write_cost(calls) for _ in range(rounds)]
    for ratio in (1.0, 0.1, 0.0):
        one, provider = tracing_call(ratio)
        timed = []
        for _ in range(rounds):
            start = time.process_time_ns()
            for _ in range(calls):
                one()
            provider.force_flush()  # the export of this round's spans counts too
            timed.append((time.process_time_ns() - start) / calls / 1000)
        provider.shutdown()
        results[f"tracing {ratio:.1f}"] = timed
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observe", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    results = measure(args.calls, args.rounds)
    print(f"per call (per message, per scrape), median of {args.rounds} rounds of {args.calls:,} (best round)")
    for name, timed in results.items():
        print(f"  {name:<17} {statistics.median(timed):8.2f} µs  ({min(timed):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
