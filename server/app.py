"""Build and run the gateway: the grpc.aio server with AIService, health, reflection and auth, and the
Prometheus `/metrics` listener when `metrics.listen` is configured.

`start_gateway(config)` binds and starts a server and returns a `Gateway` with its bound port (tests
listen on 127.0.0.1:0). `serve(config)` adds signal handling and graceful shutdown on top, and with a
`reload` function, a config reload on SIGHUP and whenever the config file changes. With `workers:` above 1
each worker process (server/workers/) runs `serve` as well, on a shared port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from generated import ai_service_pb2, ai_service_pb2_grpc
from server import defaults
from server.auth import BearerAuthInterceptor, credentials_of
from server.config import ConfigError, GatewayConfig, KeepaliveConfig, LimitsConfig, TLSConfig, parse_listen
from server.decoding import add_service
from server.observe.exporter import MetricsServer, start_metrics_server
from server.observe.health import SERVING, HealthService
from server.observe.metrics import GatewayMetrics, LabelBounds, LimitsStoreMetrics
from server.observe.model_health import ModelHealth
from server.observe.shadow_metrics import ShadowMetrics
from server.observe.trace import Tracing, tracing_from_env
from server.policy.clients import ClientPolicy
from server.policy.fair_queue import FairQueue
from server.policy.redis_store import RedisQuotaStore
from server.policy.seam import Policy, Seam
from server.policy.store import QuotaStore
from server.routing.dispatch import Router
from server.service import COUNTS_ITS_WRITES, AIService

__all__ = ["Gateway", "WatchedFile", "WorkerLink", "announce", "bound_address", "serve", "start_gateway"]

log = logging.getLogger(__name__)

SERVICE_NAME = ai_service_pb2.DESCRIPTOR.services_by_name["AIService"].full_name
# Each AIService method's request type, by method name (for MALFORMED_REQUEST's message).
REQUEST_TYPES = {
    method.name: method.input_type.full_name
    for method in ai_service_pb2.DESCRIPTOR.services_by_name["AIService"].methods
}


@dataclass(slots=True)
class Gateway:
    """A started gateway server, serving `config` (the one it started with, or the last one reloaded)."""

    server: grpc.aio.Server
    port: int
    health: HealthService
    service: AIService
    seam: Seam
    tracing: Tracing
    config: GatewayConfig
    queue: FairQueue | None = None
    auth: BearerAuthInterceptor | None = None
    metrics: GatewayMetrics | None = None
    metrics_server: MetricsServer | None = None
    clients: ClientPolicy | None = None  # allowed models, limits and budgets per client
    model_health: ModelHealth | None = None
    shadow_metrics: ShadowMetrics | None = None

    @property
    def router(self) -> Router:
        """The router new calls go to."""
        return self.seam.router

    def reload(self, config: GatewayConfig) -> None:
        """Serve `config` from the next call on: clients' tokens, providers and their keys, models, aliases,
        deployments and their weights, fallbacks, retries, breakers and limits. Calls and streams already
        running finish on what they started with.

        What is bound when the process starts (the listen address, TLS, keepalive, the metrics listener,
        max_request_bytes, logging, InteractiveStream limits, and whether auth is on at all) keeps its
        running value; a change to it is logged as needing a restart.
        """
        for name in _RESTART_ONLY:
            if getattr(config, name) != getattr(self.config, name):
                log.warning("config reload: %s changed; it takes effect at the next restart", name)
        backend = ("backend", "backend_unavailable", "backend_timeout_s")
        if any(getattr(config.limits, f) != getattr(self.config.limits, f) for f in backend):
            log.warning("config reload: limits.backend changed; it takes effect at the next restart")
        if config.authenticates != self.config.authenticates:
            turned = "on" if config.authenticates else "off"
            log.warning("config reload: auth was turned %s; it takes effect at the next restart", turned)
        router = Router.from_config(config)
        if self.metrics is not None:
            self.metrics.watch(router.resilience, label_bounds(config, router))
        if self.shadow_metrics is not None:
            self.shadow_metrics.watch(router.shadows)
        if self.model_health is not None:  # the new catalog's models, following the new breakers
            self.model_health.close()
            before = set(self.model_health.services)
            self.model_health = ModelHealth(router.catalog, self.health)
            self.model_health.start(router.resilience)
            for gone in before - set(self.model_health.services):
                self.health.remove(gone)
        if self.auth is not None and config.authenticates:
            self.auth.update(credentials_of(config))
        if self.queue is not None:
            limits = config.limits
            self.queue.resize(limits.max_concurrent_upstream, limits.queue_wait_s, limits.retry_after_s)
        if self.clients is not None:  # new rules and limits; the counters (the store) carry on
            clients = ClientPolicy.from_config(config, router.catalog, self.clients.store)
            self.seam.replace_policy(self.clients, clients)
            self.clients = clients
        self.seam.swap(router)
        kept = {name: getattr(self.config, name) for name in _RESTART_ONLY}
        kept["limits"] = replace(config.limits, **{f: getattr(self.config.limits, f) for f in backend})
        if self.auth is None:  # auth stays off until a restart: the clients' rules are kept out too
            kept |= {"auth": None, "clients": ()}
        self.config = replace(config, **kept)
        log.info("config reloaded: %s; models: %s", _auth_summary(self.config), ", ".join(router.catalog.model_names))

    async def stop(self, grace_s: float | None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight calls run up to `grace_s`, close.

        Calls still running just before the grace period ends are ended by the gateway with UNAVAILABLE
        `SHUTTING_DOWN` (and `deltas_sent`), so even they get an honest status with details.
        """
        self.service.draining = True
        self.health.enter_graceful_shutdown()
        if self.model_health is not None:
            self.model_health.close()
        await self.service.announce_shutdown(grace_s)  # InteractiveStream sessions get a go_away
        stopping = asyncio.create_task(self.server.stop(grace_s))
        if grace_s:
            await asyncio.wait({stopping}, timeout=max(grace_s - defaults.SHUTDOWN_ABORT_LEAD_S, 0.0))
            if not stopping.done():
                await self.service.end_in_flight_calls()
        await stopping
        await self.seam.aclose()
        if self.clients is not None:
            await self.clients.store.aclose()  # the settlements still queued for a shared store go out
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await asyncio.to_thread(self.tracing.shutdown)  # the spans still buffered go out


# Config fields bound when the process starts: a reload keeps their running values.
_RESTART_ONLY = (
    *("listen", "tls", "keepalive", "metrics", "max_request_bytes", "log_level", "log_format", "interactive"),
    "workers",
)


def server_options(config: GatewayConfig, *, reuseport: bool = False) -> list[tuple[str, int]]:
    return [
        # Room for message overhead beyond the content cap, so an oversized request gets our own
        # INVALID_ARGUMENT with the field that is too big, not gRPC's bare RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", config.max_request_bytes + defaults.MAX_MESSAGE_OVERHEAD_BYTES),
        # One process per port unless asked otherwise: a second `make run` must fail, not share the port.
        # Workers share theirs; their supervisor checked first that no one else listens there.
        ("grpc.so_reuseport", int(reuseport)),
        # Calls that arrive faster than the event loop takes them wait in gRPC's queue. Past its default
        # (randomly from 1,000, every one from 3,000) gRPC cancels them with a bare CANCELLED before the
        # gateway sees them; with this bound the gateway answers each, over its limits GATEWAY_OVERLOADED.
        ("grpc.server.max_pending_requests", config.limits.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", config.limits.max_pending_calls),
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
    """The server's certificate; with `client_ca_file`, every client must present one that CA signed."""
    pair = [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())]
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=tls.client_ca_file.read_bytes(), require_client_auth=True
    )


async def start_gateway(
    config: GatewayConfig,
    *,
    policies: Sequence[Policy] = (),
    tracing: Tracing | None = None,
    quota_store: QuotaStore | None = None,
    worker: bool = False,
) -> Gateway:
    """Bind and start a gateway for `config`; `policies` plug into the policy seam (server/policy/seam.py)
    after the clients' own (allowed models, limits, budgets: server/policy/clients.py), whose counters
    live in `quota_store` (default: this process's memory). `tracing` defaults to what the OTEL_*
    variables ask for (server/observe/trace.py): off unless set.

    A `worker` (one of several processes, server/workers/) binds with SO_REUSEPORT and writes its
    metrics to prometheus-client's multiprocess files, which its supervisor serves on `/metrics`.
    """
    tracing = tracing or tracing_from_env()
    router = Router.from_config(config)
    metrics = gateway_metrics(config, router, shared=worker) if config.metrics.listen is not None else None
    shadow_metrics = ShadowMetrics(metrics.registry) if metrics is not None else None
    if shadow_metrics is not None:
        shadow_metrics.watch(router.shadows)
    interceptors: list[grpc.aio.ServerInterceptor] = [metrics.grpc] if metrics else []
    auth = BearerAuthInterceptor(credentials_of(config), tracing=tracing) if config.authenticates else None
    if auth is not None:  # after the metrics: a call refused for its token is counted too
        interceptors.append(auth)
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config, reuseport=worker))
    store = quota_store or quota_store_for(config.limits)
    if metrics is not None and isinstance(store, RedisQuotaStore):
        store.observers.append(LimitsStoreMetrics(metrics.registry))
    clients = ClientPolicy.from_config(config, router.catalog, store)
    limits = config.limits
    queue = FairQueue(limits.max_concurrent_upstream, limits.queue_wait_s, retry_after_s=limits.retry_after_s)
    # The client's own rules first (a model it may not call, a limit it is over: refused at once), then the
    # wait for a slot.
    observers = [metrics] if metrics else []
    seam = Seam(router, (clients, queue, *policies), tracing=tracing, observers=observers, model_filters=[clients])
    service = AIService(seam, max_request_bytes=config.max_request_bytes, interactive=config.interactive)
    add_service(ai_service_pb2_grpc.add_AIServiceServicer_to_server, service, server, REQUEST_TYPES)
    health_servicer = HealthService()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Every status is set before the port opens: a probe never sees a model as unknown.
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, SERVING)
    model_health = ModelHealth(router.catalog, health_servicer)
    model_health.start(router.resilience)
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
    return Gateway(
        server,
        port,
        health_servicer,
        service,
        seam,
        tracing,
        config,
        queue=queue,
        auth=auth,
        metrics=metrics,
        metrics_server=metrics_server,
        clients=clients,
        model_health=model_health,
        shadow_metrics=shadow_metrics,
    )


def quota_store_for(limits: LimitsConfig) -> QuotaStore | None:
    """The shared store `limits.backend` names; None for this process's memory (the clients' default)."""
    if limits.backend == "memory":
        return None
    unavailable: Literal["open", "closed"] = "open" if limits.backend_unavailable == "open" else "closed"
    return RedisQuotaStore(limits.backend, timeout_s=limits.backend_timeout_s, when_unavailable=unavailable)


def gateway_metrics(config: GatewayConfig, router: Router, *, shared: bool = False) -> GatewayMetrics:
    """The metrics of a gateway of `config`, watching `router`'s breakers, retry budgets and call plans;
    `shared` when a worker writes them for its supervisor to serve."""
    metrics = GatewayMetrics(label_bounds(config, router), shared=shared, counted_by_handler=COUNTS_ITS_WRITES)
    metrics.watch(router.resilience)
    return metrics


def label_bounds(config: GatewayConfig, router: Router) -> LabelBounds:
    """The metric label values a gateway of `config` may use: its catalog's, clients' and providers' names."""
    clients = [token.name for token in config.auth.tokens] if config.auth else []
    clients += [client.name for client in config.clients]
    return LabelBounds(router.catalog, clients, [p.name for p in config.providers])


def _auth_summary(config: GatewayConfig) -> str:
    """ "3 clients, mTLS", "1 client token(s)" or "no auth", for the start-up line."""
    if not config.authenticates:
        return "no auth"
    if not config.clients and config.auth is not None:
        return f"{len(config.auth.tokens)} client token(s)"
    names = {c.name for c in config.clients} | ({t.name for t in config.auth.tokens} if config.auth else set())
    mtls = ", mTLS" if config.tls is not None and config.tls.client_ca_file is not None else ""
    return f"{len(names)} client(s){mtls}"


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def bound_address(listen: str, port: int) -> str:
    """`listen` with its port replaced by the one actually bound (`127.0.0.1:0` -> `127.0.0.1:43117`)."""
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"


class WorkerLink(Protocol):
    """A worker's line to its supervisor (server/workers/)."""

    def started(self, gateway: Gateway, stop: Callable[[], None]) -> None:
        """`gateway` serves: tell the supervisor, and call `stop` (start the drain) if the supervisor dies."""


async def serve(
    config: GatewayConfig,
    tracing: Tracing | None = None,
    *,
    reload: Callable[[], GatewayConfig] | None = None,
    watch: WatchedFile | None = None,
    worker: WorkerLink | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully within the configured grace period.

    With `reload` (which loads the config again, raising ConfigError for a bad one): SIGHUP reloads, and
    so does a change of the file `watch`. A config with problems is refused whole: every problem is
    logged and the running config is kept. `watch` is taken before the config was loaded, so that a change
    made while the gateway starts is not missed."""
    stop = asyncio.Event()
    reload_asked = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the port opens: no window where a signal kills us
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    gateway = await start_gateway(config, tracing=tracing, worker=worker is not None)
    if worker is None:
        metrics_port = gateway.metrics_server.port if gateway.metrics_server is not None else None
        announce(config, gateway.port, gateway.router.catalog.model_names, metrics_port=metrics_port)
    else:
        worker.started(gateway, stop.set)
    background: list[asyncio.Task[None]] = []
    if reload is not None:
        background.append(asyncio.create_task(_reload_when_asked(gateway, reload, reload_asked)))
        if watch is not None:
            background.append(asyncio.create_task(watch.changes(reload_asked.set)))
    await stop.wait()
    for task in background:
        task.cancel()
    grace_s = gateway.config.grace_period_s
    log.info("shutting down: in-flight calls have %.1f s to finish", grace_s)
    await gateway.stop(grace_s)
    log.info("stopped")


async def _reload_when_asked(gateway: Gateway, load: Callable[[], GatewayConfig], asked: asyncio.Event) -> None:
    while True:
        await asyncio.shield(asked.wait())
        asked.clear()  # a change during the reload asks for another one
        try:
            config = await asyncio.to_thread(load)
        except ConfigError as problems:
            log.error("config reload refused, the running config is kept:\n%s", problems)
            continue
        except (OSError, ValueError) as exc:
            log.error("config reload refused, the running config is kept: %s", exc)
            continue
        gateway.reload(config)


@dataclass(slots=True)
class WatchedFile:
    """A file, and how it looked when it was last read (None: it was not there)."""

    path: Path
    identity: tuple[int, int, int, int] | None

    @classmethod
    def now(cls, path: Path) -> WatchedFile:
        return cls(path, _identity(path))

    async def changes(self, changed: Callable[[], None], interval_s: float = defaults.CONFIG_POLL_S) -> None:
        """Call `changed` whenever the file's identity, size or modification time differs from the last look
        (every `interval_s`): an editor's save, a `mv` into place, a Kubernetes ConfigMap's symlink swap."""
        while True:
            await asyncio.sleep(interval_s)
            identity = _identity(self.path)
            if identity != self.identity:
                self.identity = identity
                changed()


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        found = os.stat(path)  # follows symlinks: a ConfigMap swaps the link, not the file
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def announce(
    config: GatewayConfig, port: int, models: Sequence[str], *, metrics_port: int | None = None, workers: int = 1
) -> None:
    """Log where the gateway listens: the one line a supervisor (or a test) waits for, once per gateway."""
    scheme = "tls" if config.tls else "plaintext"
    auth = _auth_summary(config)
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
