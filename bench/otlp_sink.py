"""An OTLP trace receiver that accepts every export and keeps nothing: where the bench's gateway with
tracing on sends its spans, so that tracing costs the gateway what it costs with a real collector.

    async with OtlpSink() as sink:      # grpc.aio on 127.0.0.1:<sink.port>
        env = sink.environment()        # the OTEL_* variables that point a gateway at it

It runs in the bench's own process (which measures no CPU) and counts the exports it received.
"""

from __future__ import annotations

from types import TracebackType

import grpc

__all__ = ["OtlpSink"]

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OtlpSink:
    def __init__(self) -> None:
        self._server = grpc.aio.server()
        self.exports = 0
        self.port = 0

    async def _export(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.exports += 1
        return b""  # an empty ExportTraceServiceResponse: everything accepted

    def environment(self) -> dict[str, str]:
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "bench-gateway",
        }

    async def __aenter__(self) -> OtlpSink:
        handler = grpc.method_handlers_generic_handler(
            _SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._export)}
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._server.stop(None)
