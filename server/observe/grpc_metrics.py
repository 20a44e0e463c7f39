"""gRPC server metrics under go-grpc-prometheus's names, so the dashboards operators already have work:

    grpc_server_started_total{grpc_type, grpc_service, grpc_method}
    grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}
    grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}      histogram
    grpc_server_msg_received_total{grpc_type, grpc_service, grpc_method}
    grpc_server_msg_sent_total{grpc_type, grpc_service, grpc_method}

`grpc_type` is unary, client_stream, server_stream or bidi_stream; `grpc_code` is spelt as Go spells it
("OK", "Canceled", "InvalidArgument", "Unauthenticated"). The interceptor goes first, before auth, so
calls refused for their token count too. Only registered methods get a handler, so the labels are
bounded by the services the server offers.

A handler that writes with `context.write` gets a context whose `write` counts into a plain int; the
counter is added to once, when the call ends. Nothing else happens per message.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["GO_CODE_NAMES", "GrpcServerMetrics"]

# grpc-go's codes.Code.String(), which go-grpc-prometheus writes as grpc_code.
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# Seconds; an LLM stream may run for minutes, so the buckets go further than go-grpc-prometheus's default.
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
_Labels: TypeAlias = tuple[str, str, str]


class GrpcServerMetrics(grpc.aio.ServerInterceptor):
    """The interceptor that counts every RPC; put it first in the server's interceptors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        names = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started", "RPCs started on the server.", names, registry=registry)
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status.",
            (*names, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            names,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received", "Messages received from clients, per RPC kind.", names, registry=registry
        )
        self.sent = Counter("grpc_server_msg_sent", "Messages sent to clients, per RPC kind.", names, registry=registry)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED itself, and no label is made
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return self._wrap(handler, service, method)

    def _wrap(self, handler: Handler, service: str, method: str) -> Handler:
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            labels = ("bidi_stream", service, method)
            return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream, labels), **kwargs)
        if handler.request_streaming:
            labels = ("client_stream", service, method)
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary, labels), **kwargs)
        if handler.response_streaming:
            labels = ("server_stream", service, method)
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream, labels), **kwargs)
        labels = ("unary", service, method)
        return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, labels), **kwargs)

    def _unary(self, behavior: Any, labels: _Labels) -> Callable[[Any, Any], Awaitable[Any]]:
        async def measured(request: Any, context: Any) -> Any:
            call = _Call(self, labels, request, context)
            try:
                response = await behavior(call.request, call.context)
            except BaseException as exc:
                call.end(exc)
                raise
            call.context.sent += 1
            call.end(None)
            return response

        return measured

    def _streaming(self, behavior: Any, labels: _Labels) -> Callable[[Any, Any], Any]:
        # grpc.aio tells a writing coroutine from an async generator by its function: keep the kind.
        if inspect.isasyncgenfunction(behavior):

            async def generated(request: Any, context: Any) -> AsyncIterator[Any]:
                call = _Call(self, labels, request, context)
                try:
                    async for response in behavior(call.request, call.context):
                        call.context.sent += 1
                        yield response
                except BaseException as exc:
                    call.end(exc)
                    raise
                call.end(None)

            return generated

        async def writing(request: Any, context: Any) -> None:
            call = _Call(self, labels, request, context)
            try:
                await behavior(call.request, call.context)
            except BaseException as exc:
                call.end(exc)
                raise
            call.end(None)

        return writing


class _Call:
    """One RPC being measured: its start, and the counting context and request stream it hands on."""

    __slots__ = ("context", "labels", "metrics", "request", "started")

    def __init__(self, metrics: GrpcServerMetrics, labels: _Labels, request: Any, context: Any) -> None:
        self.metrics, self.labels, self.started = metrics, labels, time.perf_counter()
        metrics.started.labels(*labels).inc()
        self.context = _CountingContext(context)
        if labels[0] in ("client_stream", "bidi_stream"):
            self.request: Any = _CountingRequests(request, self.context)
        else:
            self.request = request
            self.context.received = 1

    def end(self, error: BaseException | None) -> None:
        metrics, labels, context = self.metrics, self.labels, self.context
        metrics.handled.labels(*labels, GO_CODE_NAMES.get(_status_of(context, error), "Unknown")).inc()
        metrics.handling.labels(*labels).observe(time.perf_counter() - self.started)
        if context.received:
            metrics.received.labels(*labels).inc(context.received)
        if context.sent:
            metrics.sent.labels(*labels).inc(context.sent)


def _status_of(context: _CountingContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the client receives: the one the handler set (abort sets it before it raises), else OK
    when it returned, CANCELLED or DEADLINE_EXCEEDED when it was cancelled, UNKNOWN when it raised."""
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _CountingContext:
    """The servicer context, with `write` and `read` counting messages. Everything else is the context's."""

    __slots__ = ("_context", "received", "sent")

    def __init__(self, context: Any) -> None:
        self._context = context
        self.sent = 0
        self.received = 0

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self.sent += 1

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self.received += 1
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _CountingRequests:
    """A client stream's request iterator that counts what it hands on."""

    __slots__ = ("_context", "_requests")

    def __init__(self, requests: Any, context: _CountingContext) -> None:
        self._requests = requests.__aiter__()
        self._context = context

    def __aiter__(self) -> _CountingRequests:
        return self

    async def __anext__(self) -> Any:
        message = await self._requests.__anext__()
        self._context.received += 1
        return message
