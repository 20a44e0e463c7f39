"""Build and run the gateway: the grpc.aio server with AIService, health, reflection and auth, and the
Prometheus `/metrics` listener when `metrics.listen` is configured.

`start_gateway(config)` binds and starts a server and returns a `Gateway` with its bound port (tests
listen on 127.0.0.1:0). `serve(config)` adds signal handling and graceful shutdown on top. With
`workers:` above 1 each worker process (server/workers.py) runs `serve` as well, on a shared port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from generated import ai_service_pb2, ai_service_pb2_grpc
from server import defaults
from server.auth import BearerAuthInterceptor
from server.config import GatewayConfig, KeepaliveConfig, TLSConfig, parse_listen
from server.observe.exporter import MetricsServer, start_metrics_server
from server.observe.metrics import GatewayMetrics, LabelBounds
from server.observe.trace import Tracing, tracing_from_env
from server.policy.seam import Policy, Seam
from server.routing.dispatch import Router
from server.service import AIService

__all__ = ["Gateway", "WorkerLink", "announce", "bound_address", "serve", "start_gateway"]

log = logging.getLogger(__name__)

SERVICE_NAME = ai_service_pb2.DESCRIPTOR.services_by_name["AIService"].full_name


@dataclass(slots=True)
class Gateway:
    """A started gateway server."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service: AIService
    router: Router
    tracing: Tracing
    metrics: GatewayMetrics | None = None
    metrics_server: MetricsServer | None = None

    async def stop(self, grace_s: float | None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight calls run up to `grace_s`, close.

        Calls still running just before the grace period ends are ended by the gateway with UNAVAILABLE
        `SHUTTING_DOWN` (and `deltas_sent`), so even they get an honest status with details.
        """
        self.service.draining = True
        await self.health.enter_graceful_shutdown()
        await self.service.announce_shutdown(grace_s)  # InteractiveStream sessions get a go_away
        stopping = asyncio.create_task(self.server.stop(grace_s))
        if grace_s:
            await asyncio.wait({stopping}, timeout=max(grace_s - defaults.SHUTDOWN_ABORT_LEAD_S, 0.0))
            if not stopping.done():
                await self.service.end_in_flight_calls()
        await stopping
        await self.router.aclose()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await asyncio.to_thread(self.tracing.shutdown)  # the spans still buffered go out


def server_options(config: GatewayConfig, *, reuseport: bool = False) -> list[tuple[str, int]]:
    return [
        # Room for message overhead beyond the content cap, so an oversized request gets our own
        # INVALID_ARGUMENT with the field that is too big, not gRPC's bare RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", config.max_request_bytes + defaults.MAX_MESSAGE_OVERHEAD_BYTES),
        # One process per port unless asked otherwise: a second `make run` must fail, not share the port.
        # Workers share theirs; their supervisor checked first that no one else listens there.
        ("grpc.so_reuseport", int(reuseport)),
        *keepalive_options(config.keepalive),
    ]


def keepalive_options(keepalive: KeepaliveConfig) -> list[tuple[str, int]]:
    """HTTP/2 keepalive: the server pings connections every `time_s` (so NATs and load balancers see traffic
    during a long wait for the first token, and dead peers are noticed), and accepts client pings as often
    as every `min_client_ping_interval_s`, with or without calls in flight (gRPC's default policy answers a
    client pinging more often than every 5 minutes with GOAWAY too_many_pings). `max_connection_age_s`
    makes clients reconnect now and then, so that they spread over the instances behind a load balancer;
    its grace (unset: unlimited) lets the streams running on an aged connection finish."""
    options = [
        ("grpc.keepalive_time_ms", _ms(keepalive.time_s)),
        ("grpc.keepalive_timeout_ms", _ms(keepalive.timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging through a long silence before the first token
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(keepalive.min_client_ping_interval_s)),
    ]
    if keepalive.max_connection_age_s is not None:
        options.append(("grpc.max_connection_age_ms", _ms(keepalive.max_connection_age_s)))
    if keepalive.max_connection_age_grace_s is not None:
        options.append(("grpc.max_connection_age_grace_ms", _ms(keepalive.max_connection_age_grace_s)))
    return options


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 1)


def _server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())])


async def start_gateway(
    config: GatewayConfig, *, policies: Sequence[Policy] = (), tracing: Tracing | None = None, worker: bool = False
) -> Gateway:
    """Bind and start a gateway for `config`; `policies` plug into the policy seam (server/policy/seam.py).
    `tracing` defaults to what the OTEL_* variables ask for (server/observe/trace.py): off unless set.

    A `worker` (one of several processes, server/workers.py) binds with SO_REUSEPORT and writes its
    metrics to prometheus-client's multiprocess files, which its supervisor serves on `/metrics`.
    """
    tracing = tracing or tracing_from_env()
    router = Router.from_config(config)
    metrics = gateway_metrics(config, router, shared=worker) if config.metrics.listen is not None else None
    interceptors: list[grpc.aio.ServerInterceptor] = [metrics.grpc] if metrics else []
    if config.auth:  # after the metrics: a call refused for its token is counted too
        interceptors.append(BearerAuthInterceptor(config.auth.tokens, tracing=tracing))
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config, reuseport=worker))
    seam = Seam(router, policies, tracing=tracing, observers=[metrics] if metrics else [])
    service = AIService(seam, max_request_bytes=config.max_request_bytes, interactive=config.interactive)
    ai_service_pb2_grpc.add_AIServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Reflection describes the published contract, so it needs no token: grpcurl without one then reports
    # the call's own UNAUTHENTICATED instead of failing to look the method up.
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    try:
        if config.tls:
            port = server.add_secure_port(config.listen, _server_credentials(config.tls))
        else:
            port = server.add_insecure_port(config.listen)
        await server.start()
    except (RuntimeError, OSError) as exc:
        await router.aclose()
        raise OSError(f"cannot listen on {config.listen}: {_why(exc)}") from exc
    metrics_server = None
    if metrics is not None and config.metrics.listen is not None and not worker:
        try:
            metrics_server = start_metrics_server(*parse_listen(config.metrics.listen), metrics.registry)
        except OSError as exc:
            await server.stop(None)
            await router.aclose()
            raise OSError(f"cannot listen on {config.metrics.listen} (metrics.listen): {_why(exc)}") from exc
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Gateway(server, port, health_servicer, service, router, tracing, metrics, metrics_server)


def gateway_metrics(config: GatewayConfig, router: Router, *, shared: bool = False) -> GatewayMetrics:
    """The metrics of a gateway of `config`, watching `router`'s breakers, retry budgets and call plans;
    `shared` when a worker writes them for its supervisor to serve."""
    clients = [token.name for token in config.auth.tokens] if config.auth else []
    bounds = LabelBounds(router.catalog, clients, [p.name for p in config.providers])
    metrics = GatewayMetrics(bounds, shared=shared)
    metrics.watch(router.resilience)
    return metrics


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def bound_address(listen: str, port: int) -> str:
    """`listen` with its port replaced by the one actually bound (`127.0.0.1:0` -> `127.0.0.1:43117`)."""
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"


class WorkerLink(Protocol):
    """A worker's line to its supervisor (server/workers.py)."""

    def started(self, gateway: Gateway, stop: Callable[[], None]) -> None:
        """`gateway` serves: tell the supervisor, and call `stop` (start the drain) if the supervisor dies."""


async def serve(config: GatewayConfig, tracing: Tracing | None = None, *, worker: WorkerLink | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully within the configured grace period."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the port opens: no window where a signal kills us
        loop.add_signal_handler(sig, stop.set)
    gateway = await start_gateway(config, tracing=tracing, worker=worker is not None)
    if worker is None:
        metrics_port = gateway.metrics_server.port if gateway.metrics_server is not None else None
        announce(config, gateway.port, gateway.router.catalog.model_names, metrics_port=metrics_port)
    else:
        worker.started(gateway, stop.set)
    await stop.wait()
    log.info("shutting down: in-flight calls have %.1f s to finish", config.grace_period_s)
    await gateway.stop(config.grace_period_s)
    log.info("stopped")


def announce(
    config: GatewayConfig, port: int, models: Sequence[str], *, metrics_port: int | None = None, workers: int = 1
) -> None:
    """Log where the gateway listens: the one line a supervisor (or a test) waits for, once per gateway."""
    scheme = "tls" if config.tls else "plaintext"
    auth = f"{len(config.auth.tokens)} client token(s)" if config.auth else "no auth"
    processes = f", {workers} workers" if workers > 1 else ""
    if metrics_port is not None and config.metrics.listen is not None:
        # Before the "listening on" line, with the bound port too: whoever reads that line finds this one.
        log.info("metrics on http://%s/metrics", bound_address(config.metrics.listen, metrics_port))
    # The bound address, not the configured one: with port 0 this line is how a supervisor (or a test)
    # learns the port the kernel chose. Keep its start stable: `listening on HOST:PORT `.
    log.info(
        "listening on %s (%s, %s%s); models: %s",
        bound_address(config.listen, port),
        scheme,
        auth,
        processes,
        ", ".join(models),
    )
