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

A unary handler gets gRPC's own context: its request is one message received, its returned response
one sent. A handler that writes with `context.write` gets a context whose `write` counts into a plain int
(and hands gRPC's own write back to be awaited: no coroutine of its own per message), unless its method is
one that counts what it writes itself (`counted_by_handler`, StreamGenerate: a local count, told once with
`messages_sent`); a client stream's reads are counted as they are handed on. The counters are added to
once, when the call ends.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import aclosing
from contextvars import ContextVar
from typing import Any, TypeAlias

import grpc
from prometheus_client import CollectorRegistry

from server.observe.lean import MetricKinds

__all__ = ["GO_CODE_NAMES", "GrpcServerMetrics", "messages_sent"]

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

    def __init__(
        self, registry: CollectorRegistry, kinds: MetricKinds, *, counted_by_handler: Collection[str] = ()
    ) -> None:
        names = ("grpc_type", "grpc_service", "grpc_method")
        self.started = kinds.counter("grpc_server_started", "RPCs started on the server.", names, registry=registry)
        self.handled = kinds.counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status.",
            (*names, "grpc_code"),
            registry=registry,
        )
        self.handling = kinds.histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            names,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self.received = kinds.counter(
            "grpc_server_msg_received", "Messages received from clients, per RPC kind.", names, registry=registry
        )
        self.sent = kinds.counter(
            "grpc_server_msg_sent", "Messages sent to clients, per RPC kind.", names, registry=registry
        )
        # Methods ("/package.Service/Method") whose handlers count the messages they write themselves
        # (`messages_sent`), so that no counting context stands between them and gRPC's `write`.
        self._counted_by_handler = frozenset(counted_by_handler)
        # Per registered method (bounded by the services the server offers).
        self._methods: dict[_Labels, _Method] = {}
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED itself, and no label is made
            return None
        name = handler_call_details.method
        cached = self._wrapped.get(name)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # The servicer's handlers are the same objects call after call; auth's refusals are new each time.
        service, _, method = name.lstrip("/").rpartition("/")
        wrapped = self._wrap(handler, service, method)
        self._wrapped[name] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, service: str, method: str) -> Handler:
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            measured = self._method("bidi_stream", service, method)
            return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, measured), **kwargs)
        if handler.request_streaming:
            measured = self._method("client_stream", service, method)
            return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, measured), **kwargs)
        if handler.response_streaming:
            measured = self._method("server_stream", service, method)
            return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, measured), **kwargs)
        measured = self._method("unary", service, method)
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, measured), **kwargs)

    def _method(self, kind: str, service: str, method: str) -> _Method:
        key = (kind, service, method)
        found = self._methods.get(key)
        if found is None:
            counted = f"/{service}/{method}" in self._counted_by_handler
            found = self._methods[key] = _Method(self, key, counted_by_handler=counted)
        return found


class _Method:
    """The metrics of one method, their label lookups made once (prometheus-client's `labels` is slow)."""

    __slots__ = (
        "_handled",
        "_handled_by_code",
        "client_streams",
        "counted_by_handler",
        "handling",
        "labels",
        "received",
        "sent",
        "started",
    )

    def __init__(self, metrics: GrpcServerMetrics, labels: _Labels, *, counted_by_handler: bool = False) -> None:
        self.labels = labels
        self.counted_by_handler = counted_by_handler
        self.client_streams = labels[0] in ("client_stream", "bidi_stream")
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self._handled = metrics.handled
        self._handled_by_code: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled_by_code.get(code)
        if child is None:
            child = self._handled_by_code[code] = self._handled.labels(*self.labels, code)
        return child


def _unary(behavior: Any, method: _Method) -> Callable[[Any, Any], Awaitable[Any]]:
    async def measured(request: Any, context: Any) -> Any:
        call = _Call(method, request, context)
        try:
            response = await behavior(call.request, call.context)
        except BaseException as exc:
            call.end(exc)
            raise
        call.tally.sent += 1
        call.end(None)
        return response

    return measured


def _streaming(behavior: Any, method: _Method) -> Callable[[Any, Any], Any]:
    # grpc.aio tells a writing coroutine from an async generator by its function: keep the kind.
    if inspect.isasyncgenfunction(behavior):

        async def generated(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(method, request, context)
            try:
                async with aclosing(behavior(call.request, call.context)) as responses:
                    async for response in responses:
                        call.tally.sent += 1
                        yield response
            except BaseException as exc:
                call.end(exc)
                raise
            call.end(None)

        return generated

    async def writing(request: Any, context: Any) -> None:
        call = _Call(method, request, context, writes=True)
        # In this call's own task, so no other call sees it; reset after, so that what the handler started
        # (and copied the task's context into) does not keep it.
        reporting = _COUNTED_BY_HANDLER.set(call.tally) if method.counted_by_handler else None
        try:
            await behavior(call.request, call.context)
        except BaseException as exc:
            call.end(exc)
            raise
        finally:
            if reporting is not None:
                _COUNTED_BY_HANDLER.reset(reporting)
        call.end(None)

    return writing


class _Tally:
    """The messages of one call, received and sent."""

    __slots__ = ("received", "sent")

    def __init__(self, received: int = 0) -> None:
        self.received = received
        self.sent = 0


# The tally of the call whose handler counts the messages it writes itself (`messages_sent`).
_COUNTED_BY_HANDLER: ContextVar[_Tally | None] = ContextVar("counted_by_handler", default=None)


def messages_sent(count: int) -> None:
    """`count` more messages written with `context.write` by the handler of this task's call, for a
    method its GrpcServerMetrics was told counts them itself (`counted_by_handler`); else nothing."""
    tally = _COUNTED_BY_HANDLER.get()
    if tally is not None:
        tally.sent += count


class _Call:
    """One RPC being measured: its start, its messages, and the context and request stream it hands on.

    The context is gRPC's own unless a message must be counted on its way: a written one (unless the
    handler counts its own), or a read one. A unary request is one message received, a unary response
    that was returned one sent."""

    __slots__ = ("context", "method", "request", "started", "tally")

    def __init__(self, method: _Method, request: Any, context: Any, *, writes: bool = False) -> None:
        self.method, self.started = method, time.perf_counter()
        method.started.inc()
        self.context, self.request = context, request
        if method.client_streams:
            self.tally = tally = _Tally()
            self.context, self.request = _CountingContext(context, tally), _CountingRequests(request, tally)
            return
        self.tally = _Tally(received=1)
        if writes and not method.counted_by_handler:
            self.context = _CountingContext(context, self.tally)

    def end(self, error: BaseException | None) -> None:
        method, tally = self.method, self.tally
        method.handled(GO_CODE_NAMES.get(_status_of(self.context, error), "Unknown")).inc()
        method.handling.observe(time.perf_counter() - self.started)
        if tally.received:
            method.received.inc(tally.received)
        if tally.sent:
            method.sent.inc(tally.sent)


def _status_of(context: Any, error: BaseException | None) -> grpc.StatusCode:
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
    """The servicer context, with `write` and `read` counting messages into their call. Everything else
    is the context's."""

    __slots__ = ("_context", "_tally")

    def __init__(self, context: Any, tally: _Tally) -> None:
        self._context = context
        self._tally = tally

    def write(self, message: Any) -> Awaitable[None]:
        # Not a coroutine of its own: the context's write is awaited by the handler directly, so counting
        # a token costs an increment, not a second coroutine frame (measured: 490 -> 330 ns a write, 220
        # without counting). A message is counted when the handler hands it to gRPC.
        self._tally.sent += 1
        return self._context.write(message)  # type: ignore[no-any-return]

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self._tally.received += 1
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _CountingRequests:
    """A client stream's request iterator that counts what it hands on."""

    __slots__ = ("_requests", "_tally")

    def __init__(self, requests: Any, tally: _Tally) -> None:
        self._requests = requests.__aiter__()
        self._tally = tally

    def __aiter__(self) -> _CountingRequests:
        return self

    async def __anext__(self) -> Any:
        message = await self._requests.__anext__()
        self._tally.received += 1
        return message
