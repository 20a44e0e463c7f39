"""The supervisor: starts the workers, replaces those that die, drains them all on SIGTERM or SIGINT, and
serves their metrics (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Literal

from prometheus_client.multiprocess import mark_process_dead

from server import defaults
from server.app import WatchedFile, announce, bound_address
from server.config import GatewayConfig, parse_listen
from server.errors import registered_secrets
from server.observe.exporter import MetricsServer, start_shared_metrics_server
from server.workers.restarts import RestartPolicy, describe_exit
from server.workers.worker import Ready, WorkerSpec, run_worker

__all__ = ["MULTIPROC_DIR_ENV", "Supervisor", "check_port_free", "supervise"]

log = logging.getLogger("server.workers")

# Where prometheus-client's multiprocess mode keeps each process's values; read when it is imported, so
# the supervisor sets it before it starts a worker.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def supervise(
    config: GatewayConfig,
    *,
    reload: Callable[[], GatewayConfig] | None = None,
    watch: WatchedFile | None = None,
) -> int:
    """Run `config.workers` workers until SIGTERM or SIGINT; the process's exit status. With `reload`,
    each worker reloads the config on a change of `watch` and on SIGHUP, which the supervisor passes on."""
    return asyncio.run(Supervisor(config, reload=reload, watch=watch).run())


def check_port_free(listen: str) -> None:
    """Raise OSError when something already listens on `listen` (skipped for port 0).

    Workers bind with SO_REUSEPORT, which would let them join another gateway's workers on the same port
    without a word; a plain bind (SO_REUSEADDR, as gRPC's own, so that connections of a previous run in
    TIME_WAIT do not count) fails while anyone listens there.
    """
    host, port = parse_listen(listen)
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as exc:
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc


@dataclass(eq=False, slots=True)
class _Slot:
    """One of the N places a worker fills; a dead worker's replacement takes its slot (and number)."""

    index: int
    process: BaseProcess | None = None
    # Until its exit has been handled: not `process.exitcode`, which reaps it before its event is seen.
    running: bool = False
    ready_at: float | None = None
    deaths: int = 0
    timer: asyncio.TimerHandle | None = None  # the replacement's start, or the start-up timeout

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass(frozen=True, slots=True)
class _Event:
    """Something about `process`, the worker of `slot`: it is ready, it exited, or (`restart`) its
    replacement is due."""

    kind: Literal["ready", "exited", "restart"]
    slot: _Slot
    process: BaseProcess
    ready: Ready | None = None


@dataclass(frozen=True, slots=True)
class _Signal:
    signal: signal.Signals


class Supervisor:
    """Starts, watches, replaces and drains the workers of one gateway (see the package's docstring).

    `policy` decides restarts; `clock` (monotonic seconds) is only read, so tests may pass their own.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload: Callable[[], GatewayConfig] | None = None,
        watch: WatchedFile | None = None,
    ) -> None:
        self.config = config
        self._reload, self._watch = reload, watch
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(index) for index in range(1, config.workers + 1)]
        self._listen = config.listen
        self._events: asyncio.Queue[_Event | _Signal] = asyncio.Queue()
        self._metrics_dir: Path | None = None
        self._failed = False

    def _pass_on(self, sig: signal.Signals) -> None:
        """A signal each running worker acts on by itself (SIGHUP: reload the config)."""
        for slot in self._slots:
            if slot.running and slot.process is not None and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)

    async def run(self) -> int:
        """Supervise until a signal (or giving up) and the drain after it; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._events.put_nowait, _Signal(sig))
        if self._reload is not None:
            loop.add_signal_handler(signal.SIGHUP, self._pass_on, signal.SIGHUP)
        metrics_server = None
        try:
            try:
                check_port_free(self.config.listen)
                metrics_server = self._start_metrics()
            except OSError as exc:
                print(f"gateway: {exc}", file=sys.stderr)
                return 1
            try:
                if await self._start_all(metrics_server):
                    await self._keep_running()
            except Exception:  # the supervisor's own failure (it could not start a process): drain, exit 1
                log.exception("the supervisor failed: stopping the workers")
                self._failed = True
            return await self._drain()
        finally:
            for sig in (*_STOP_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if metrics_server is not None:
                await metrics_server.close()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    # --- phases ---------------------------------------------------------------------------------------

    async def _start_all(self, metrics_server: MetricsServer | None) -> bool:
        """Start every worker and wait until all are ready: True; False when a signal came first, or a
        worker died before it was ready (the start-up failed)."""
        port_chosen = parse_listen(self._listen)[1] != 0
        for slot in self._slots if port_chosen else self._slots[:1]:
            self._start(slot)
        models: tuple[str, ...] = ()
        while not all(slot.ready_at is not None for slot in self._slots):
            event = await self._events.get()
            if isinstance(event, _Signal):
                log.info("%s during start-up: stopping the workers", event.signal.name)
                return False
            if not self._current(event):
                continue
            if event.kind == "exited":
                self._gone(event.slot, event.process)
                log.error(
                    "worker %d (pid %s) %s before it was ready: the gateway cannot start",
                    event.slot.index,
                    event.process.pid,
                    describe_exit(event.process.exitcode),
                )
                self._failed = True
                return False
            if event.kind == "ready" and event.ready is not None:
                self._ready(event.slot, event.ready)
                models = event.ready.models
                if not port_chosen:  # the first worker picked the port: the others join it
                    port_chosen = True
                    self._listen = bound_address(self._listen, event.ready.port)
                    for slot in self._slots[1:]:
                        self._start(slot)
        metrics_port = metrics_server.port if metrics_server is not None else None
        port = parse_listen(self._listen)[1]
        config = replace(self.config, listen=self._listen)
        announce(config, port, models, metrics_port=metrics_port, workers=len(self._slots))
        return True

    async def _keep_running(self) -> None:
        """Replace workers that die, until a signal, or until a worker keeps dying (then give up)."""
        loop = asyncio.get_running_loop()
        while True:
            event = await self._events.get()
            if isinstance(event, _Signal):
                log.info("%s: stopping %d workers", event.signal.name, len(self._slots))
                return
            slot = event.slot
            if not self._current(event):
                continue
            if event.kind == "restart":
                slot.timer = None
                self._start(slot)
            elif event.kind == "ready" and event.ready is not None:
                self._ready(slot, event.ready)
            elif event.kind == "exited":
                delay = self._died(slot, event.process)
                if delay is None:
                    self._failed = True
                    return
                restart = _Event("restart", slot, event.process)
                slot.timer = loop.call_later(delay, self._events.put_nowait, restart)

    async def _drain(self) -> int:
        """SIGTERM to every worker, then wait for them (at most the grace period and a margin, then
        SIGKILL); the exit status."""
        for slot in self._slots:
            slot.cancel_timer()
            if slot.running and slot.process is not None and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGTERM)
        limit = self.config.grace_period_s + defaults.WORKER_EXIT_MARGIN_S
        try:
            async with asyncio.timeout(limit):
                await self._wait_for_exits()
        except TimeoutError:
            for slot in self._slots:
                if slot.running and slot.process is not None and slot.process.pid is not None:
                    log.error(
                        "worker %d (pid %d) still runs %.1f s after SIGTERM: killing it",
                        slot.index,
                        slot.process.pid,
                        limit,
                    )
                    self._failed = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.process.pid, signal.SIGKILL)
            await self._wait_for_exits()
        if self._failed:
            log.error("stopped, with errors")
            return 1
        log.info("stopped: every worker drained")
        return 0

    async def _wait_for_exits(self) -> None:
        while any(slot.running for slot in self._slots):
            event = await self._events.get()
            if isinstance(event, _Event) and event.kind == "exited" and self._current(event):
                self._drained(event.slot, event.process)

    # --- one worker -----------------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        receive, send = self._context.Pipe(duplex=False)
        spec = WorkerSpec(
            slot.index, replace(self.config, listen=self._listen), registered_secrets(), self._reload, self._watch
        )
        process = self._context.Process(
            target=run_worker, args=(spec, send), name=f"gateway-worker-{slot.index}", daemon=True
        )
        process.start()
        send.close()  # the worker holds the other end: when it exits, `receive` ends
        slot.process, slot.running, slot.ready_at = process, True, None
        loop.add_reader(process.sentinel, self._on_exit, slot, process)
        loop.add_reader(receive.fileno(), self._on_message, slot, process, receive)
        slot.timer = loop.call_later(defaults.WORKER_START_TIMEOUT_S, self._start_timed_out, slot, process)
        log.info("started worker %d (pid %s)", slot.index, process.pid)

    def _on_exit(self, slot: _Slot, process: BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join()  # reaps it: its sentinel says it has exited
        self._events.put_nowait(_Event("exited", slot, process))

    def _on_message(self, slot: _Slot, process: BaseProcess, receive: Connection) -> None:
        asyncio.get_running_loop().remove_reader(receive.fileno())
        try:
            message = receive.recv()
        except (EOFError, OSError):  # it died before it was ready: its exit says the rest
            message = None
        receive.close()
        if isinstance(message, Ready):
            self._events.put_nowait(_Event("ready", slot, process, ready=message))

    def _start_timed_out(self, slot: _Slot, process: BaseProcess) -> None:
        slot.timer = None
        if process.exitcode is None and process.pid is not None:
            log.error(
                "worker %d (pid %d) not ready %.0f s after it started: killing it",
                slot.index,
                process.pid,
                defaults.WORKER_START_TIMEOUT_S,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)

    def _ready(self, slot: _Slot, ready: Ready) -> None:
        slot.cancel_timer()
        slot.ready_at = self._clock()
        log.info("worker %d (pid %d) ready", slot.index, ready.pid)

    def _died(self, slot: _Slot, process: BaseProcess) -> float | None:
        """A worker died while it should be serving: log it, and the delay before its replacement
        starts (None: give up)."""
        self._gone(slot, process)
        slot.cancel_timer()
        ready_for = None if slot.ready_at is None else self._clock() - slot.ready_at
        slot.deaths = self._policy.deaths(slot.deaths, ready_for)
        delay = self._policy.delay_s(slot.deaths)
        what = f"worker {slot.index} (pid {process.pid}) {describe_exit(process.exitcode)}"
        if delay is None:
            log.error(
                "%s, its %d%s death in a row within %.0f s of starting: giving up, stopping the gateway",
                what,
                slot.deaths,
                _ordinal(slot.deaths),
                self._policy.stable_s,
            )
        elif delay == 0:
            log.warning("%s: starting a new one", what)
        else:
            log.warning("%s (%d deaths in a row): starting a new one in %.1f s", what, slot.deaths, delay)
        return delay

    def _drained(self, slot: _Slot, process: BaseProcess) -> None:
        """A worker exited during the drain: an honest status counts it."""
        self._gone(slot, process)
        code = process.exitcode
        # A worker still starting when SIGTERM came ends by it: it had served nothing.
        told = slot.ready_at is None and code in (-signal.SIGTERM, -signal.SIGINT)
        if code == 0 or told:
            log.info("worker %d (pid %s) stopped", slot.index, process.pid)
            return
        log.error("worker %d (pid %s) %s while draining", slot.index, process.pid, describe_exit(code))
        self._failed = True

    def _gone(self, slot: _Slot, process: BaseProcess) -> None:
        """`slot`'s worker has exited: its live gauges leave the sum; its counters stay, so that no counter
        goes back."""
        slot.running = False
        if self._metrics_dir is not None and process.pid is not None:
            mark_process_dead(process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]

    @staticmethod
    def _current(event: _Event) -> bool:
        """Whether `event` is about its slot's current worker (not one it replaced since)."""
        return event.process is event.slot.process

    def _start_metrics(self) -> MetricsServer | None:
        listen = self.config.metrics.listen
        if listen is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)  # workers write no metrics files anywhere
            return None
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        os.environ[MULTIPROC_DIR_ENV] = str(self._metrics_dir)  # the workers inherit it
        try:
            return start_shared_metrics_server(*parse_listen(listen), self._metrics_dir)
        except OSError as exc:
            raise OSError(f"cannot listen on {listen} (metrics.listen): {exc.strerror or exc}") from exc


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
