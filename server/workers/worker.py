"""A worker process: the gateway's `serve`, started by the supervisor with multiprocessing's spawn, telling
it when it serves and draining when the supervisor is gone."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from server.app import Gateway, WatchedFile, serve
from server.config import GatewayConfig
from server.errors import register_secret
from server.observe.logs import configure_logging
from server.observe.trace import tracing_from_env

__all__ = ["Ready", "WorkerSpec", "run_worker"]

log = logging.getLogger("server.workers")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker is handed (pickled): its number, the checked config with the port to share, and
    the secrets to scrub from its errors and logs."""

    index: int
    config: GatewayConfig
    secrets: tuple[str, ...] = field(repr=False)
    # With --config: how to load it again (SIGHUP, which the supervisor passes on), and the file to watch.
    reload: Callable[[], GatewayConfig] | None = None
    watch: WatchedFile | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker's message once it serves."""

    pid: int
    port: int
    models: tuple[str, ...]


def run_worker(spec: WorkerSpec, ready: Connection) -> None:
    """A worker process's main: the gateway's `serve`, reporting to the supervisor through `ready`."""
    for secret in spec.secrets:
        register_secret(secret)
    config = spec.config
    configure_logging(config.log_level, "json" if config.log_format == "json" else "text")
    try:
        link = _SupervisorLink(spec.index, ready)
        asyncio.run(serve(config, tracing_from_env(), reload=spec.reload, watch=spec.watch, worker=link))
    except (OSError, ValueError) as exc:
        print(f"gateway: worker {spec.index} (pid {os.getpid()}): {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # SIGINT from a terminal before serve() took it over: nothing was served yet
        return


class _SupervisorLink:
    def __init__(self, index: int, ready: Connection) -> None:
        self._index = index
        self._ready = ready

    def started(self, gateway: Gateway, stop: Callable[[], None]) -> None:
        self._ready.send(Ready(os.getpid(), gateway.port, tuple(gateway.router.catalog.model_names)))
        self._ready.close()
        supervisor = multiprocessing.parent_process()
        if supervisor is None:
            return
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(supervisor.sentinel)
            log.warning("worker %d (pid %d): the supervisor is gone; draining", self._index, os.getpid())
            stop()

        # The supervisor's end of a pipe closes when it exits, however it exits.
        loop.add_reader(supervisor.sentinel, gone)
