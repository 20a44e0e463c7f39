"""The standard health service, grpc.health.v1.Health, with a status per service name that can change.

    Check(service)   its status now: SERVING or NOT_SERVING; NOT_FOUND (reason SERVICE_NOT_FOUND) for a
                     name the gateway does not report on
    Watch(service)   its status now, then every change, until the client ends the call; SERVICE_UNKNOWN
                     (and nothing after it) for a name the gateway does not report on

The names are set before the server starts: "" (the whole server), `holysheepai.AIService`, and one per
catalog model (server/observe/model_health.py keeps those up to date from the circuit breakers). A name
a client invents is never stored: a Watch of it holds nothing but its own call.

Unlike grpc's reference servicer, `set` is a plain method, so a breaker's state change (a synchronous
callback on the event loop) updates the status and wakes the watchers at once, and each watcher gets every
change in order (up to `_MAX_PENDING` not yet written; a client slower than that misses the oldest ones,
never the latest). Both RPCs take the caller's `x-request-id` (or make one) and return it in the trailers,
and a Watch in its initial metadata too; an error carries it in ErrorInfo.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.errors import ServiceNotFound, abort
from server.observe.record import log_value
from server.observe.request_id import REQUEST_ID_HEADER, bound_request_id

__all__ = ["NOT_SERVING", "SERVICE_UNKNOWN", "SERVING", "HealthService"]

ServingStatus: TypeAlias = int  # a HealthCheckResponse.ServingStatus value
ServicerContext: TypeAlias = "grpc.aio.ServicerContext[object, object]"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# Changes a watcher holds for a client that has not read them yet.
_MAX_PENDING = 16


class _Watcher:
    """One Watch call's changes not yet written, oldest first."""

    __slots__ = ("_pending", "_ready")

    def __init__(self, status: ServingStatus) -> None:
        self._pending: deque[ServingStatus] = deque((status,), maxlen=_MAX_PENDING)
        self._ready = asyncio.Event()

    def push(self, status: ServingStatus) -> None:
        self._pending.append(status)
        self._ready.set()

    async def next(self) -> ServingStatus:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()


class HealthService(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {}
        self._watchers: dict[str, set[_Watcher]] = {}
        self._shutting_down = False

    def status(self, service: str) -> ServingStatus | None:
        return self._status.get(service)

    def set(self, service: str, status: ServingStatus) -> None:
        """Set `service`'s status; ignored once the gateway is shutting down (everything is NOT_SERVING)."""
        if not self._shutting_down:
            self._set(service, status)

    def remove(self, service: str) -> None:
        """`service` is no longer reported on (a model a config reload removed): Check says NOT_FOUND, and
        its watchers are told SERVICE_UNKNOWN."""
        if self._status.pop(service, None) is not None:
            for watcher in self._watchers.get(service, ()):
                watcher.push(SERVICE_UNKNOWN)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: the load balancers steer away while calls drain."""
        self._shutting_down = True
        for service in self._status:
            self._set(service, NOT_SERVING)

    def _set(self, service: str, status: ServingStatus) -> None:
        if self._status.get(service) == status:
            return
        self._status[service] = status
        for watcher in self._watchers.get(service, ()):
            watcher.push(status)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with bound_request_id(context.invocation_metadata()) as request_id:
            trailers = ((REQUEST_ID_HEADER, request_id),)
            status = self._status.get(request.service)
            if status is None:
                await context.send_initial_metadata(trailers)  # a failed unary call names its id in its headers too
                await abort(context, _not_found(request.service, request_id), trailers)
            context.set_trailing_metadata(trailers)
            return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: ServicerContext) -> None:
        """A writing coroutine, as AIService.StreamGenerate (grpc.aio accepts either form)."""
        with bound_request_id(context.invocation_metadata()) as request_id:
            trailers = ((REQUEST_ID_HEADER, request_id),)
            context.set_trailing_metadata(trailers)
            await context.send_initial_metadata(trailers)
            service = request.service
            status = self._status.get(service)
            if status is None:
                await context.write(health_pb2.HealthCheckResponse(status=SERVICE_UNKNOWN))
                await asyncio.Event().wait()  # the names are fixed: it stays unknown until the client leaves
                return
            watcher = _Watcher(status)
            watchers = self._watchers.setdefault(service, set())
            watchers.add(watcher)
            try:
                while True:
                    await context.write(health_pb2.HealthCheckResponse(status=await watcher.next()))
            finally:
                watchers.discard(watcher)


def _not_found(service: str, request_id: str) -> ServiceNotFound:
    return ServiceNotFound(
        f"no health status for service {log_value(service)}: the gateway reports on '' (the server), "
        "holysheepai.AIService and holysheepai.AIService/<model> for each catalog model and alias",
        metadata={"service": log_value(service), "request_id": request_id},
    )
