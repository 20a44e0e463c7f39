"""Running a bench: start the upstream and the gateway, drive the load processes, collect their results.

    async with Stack.start(workdir, settings) as stack:     # upstream + gateway, both ready
        ttft = await stack.ttft("gateway", settings)
        rounds = await stack.throughput("direct", settings)

`run_bench(settings)` does all of it in a temporary folder and returns a `BenchResult`. Every child is
stopped on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2

from bench.procs import Child, Children, cpu_seconds, machine_cpu_seconds, peak_rss_bytes
from bench.results import BenchResult, LoadResult, Machine, Settings, ThroughputResult, TtftResult

__all__ = ["THROUGHPUT_TARGETS", "TTFT_TARGETS", "Progress", "Stack", "run_bench", "to_stderr"]

# A cold interpreter imports grpc, protobuf and httpx in well under a second; this leaves room for a slow box.
READY_TIMEOUT_S = 20.0
_POLL_INTERVAL_S = 0.05
# The gateway's grace period on SIGTERM: the bench stops it only when no call is left.
_GATEWAY_GRACE_S = 1.0
# How often the gateway with metrics on is scraped during a throughput window (Prometheus's default is 15 s).
_SCRAPE_INTERVAL_S = 1.0
_TTFT_MODEL_TOKENS = 1  # the shortest stream: TTFT then measures the path, not the stream's length
# The throughput sides, each round in this order: the upstream itself, the gateway calling it through
# aiohttp (its default transport), a second gateway process of the same config with metrics on (right
# after it: off and on back to back), and the first gateway process through httpx (a second provider entry).
THROUGHPUT_TARGETS = ("direct", "gateway", "gateway_metrics", "gateway-httpx")
# Time to first token: the upstream, the gateway, and the gateway with metrics on.
TTFT_TARGETS = ("direct", "gateway", "gateway_metrics")
_MODEL_PREFIX = {"gateway": "bench", "gateway-httpx": "bench-httpx", "gateway_metrics": "bench"}


@dataclass(frozen=True, slots=True)
class CpuPlan:
    """Which CPUs each child may use; None everywhere when not pinning (or on one CPU)."""

    gateway: frozenset[int] | None = None  # the gateway alone
    others: frozenset[int] | None = None  # the upstream, and the load that goes through the gateway
    # The direct side's load may use every CPU: the gateway is idle meanwhile.

    @classmethod
    def make(cls, pin: bool) -> CpuPlan:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not pin or len(cpus) < 2:
            return cls()
        return cls(gateway=frozenset(cpus[:1]), others=frozenset(cpus[1:]))

    def load_cpus(self, target: str) -> frozenset[int] | None:
        return None if target == "direct" else self.others

    def describe(self) -> str:
        if self.gateway is None or self.others is None:
            return "none (every process may use every CPU)"
        return (
            f"gateway on CPU {_cpu_list(self.gateway)}; upstream and gateway-side load on CPU "
            f"{_cpu_list(self.others)}; direct-side load on any CPU"
        )


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


@dataclass(slots=True)
class Stack:
    """The running fake upstream and gateway."""

    children: Children
    upstream: Child
    upstream_url: str  # http://127.0.0.1:PORT/v1
    gateway: Child
    gateway_address: str  # 127.0.0.1:PORT
    cpus: CpuPlan
    # The same gateway with metrics on, and its /metrics URL (None in the control run: metrics off there too).
    gateway_metrics: Child
    gateway_metrics_address: str
    metrics_url: str | None

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, workdir: Path, settings: Settings) -> AsyncIterator[Stack]:
        cpus = CpuPlan.make(settings.pin)
        async with Children(workdir) as children:
            upstream = await children.start("upstream", "tests.fakes.openai_upstream", "--port", "0", cpus=cpus.others)
            word, _, port = (await upstream.read_line(READY_TIMEOUT_S)).partition(" ")
            if word != "PORT" or not port.isdigit():
                raise upstream.failure(f"expected 'PORT <n>' on stdout, got {word} {port}")
            upstream_url = f"http://127.0.0.1:{port}/v1"
            gateway, gateway_address, _ = await _start_gateway(
                children, workdir, "gateway", upstream_url, settings, cpus
            )
            metrics, metrics_address, metrics_url = await _start_gateway(
                children, workdir, "gateway_metrics", upstream_url, settings, cpus, metrics=not settings.metrics_control
            )
            yield cls(
                children, upstream, upstream_url, gateway, gateway_address, cpus, metrics, metrics_address, metrics_url
            )

    def _endpoint(self, target: str, tokens: int) -> tuple[str, str]:
        """The address and model name a load process uses for `target` and streams of `tokens` tokens."""
        if target == "direct":
            return self.upstream_url, f"tokens-{tokens}"
        address = self.gateway_metrics_address if target == "gateway_metrics" else self.gateway_address
        return address, f"{_MODEL_PREFIX[target]}-{tokens}"

    def _gateway_pid(self, target: str) -> dict[str, int]:
        """The gateway process `target` loads (none for direct), under the one key "gateway"."""
        if target == "direct":
            return {}
        return {"gateway": (self.gateway_metrics if target == "gateway_metrics" else self.gateway).pid}

    async def ttft(self, target: str, settings: Settings) -> TtftResult:
        address, model = self._endpoint(target, _TTFT_MODEL_TOKENS)
        args = ["--requests", str(settings.ttft_requests), "--warmup", str(settings.ttft_warmup)]
        args += ["--target", target, "--address", address, "--model", model]
        child = await self.children.start(
            f"load-ttft-{target}", "bench.load", "ttft", *args, cpus=self.cpus.load_cpus(target)
        )
        raw = await _result(child, READY_TIMEOUT_S + 60 + (settings.ttft_requests + settings.ttft_warmup) * 0.1)
        await self.children.stop(child)
        result = TtftResult(**_known(TtftResult, raw))
        if not result.samples_ms:
            raise child.failure(f"no request succeeded; first error: {result.first_error}")
        return result

    async def throughput(self, target: str, settings: Settings) -> ThroughputResult:
        """One round: `settings.processes` load processes against `target`, measuring the same window."""
        address, model = self._endpoint(target, settings.tokens)
        base = ["throughput", "--target", target, "--address", address, "--model", model, "--sync"]
        options = ["--duration", str(settings.duration_s), "--warmup", str(settings.warmup_s)]
        options += ["--expect", str(settings.tokens)]
        loads = [
            await self.children.start(
                f"load-{target}-{i}",
                "bench.load",
                *base,
                *options,
                "--concurrency",
                str(n),
                stdin=True,
                cpus=self.cpus.load_cpus(target),
            )
            for i, n in enumerate(settings.per_process_concurrency())
        ]
        for load in loads:
            if (line := await load.read_line(READY_TIMEOUT_S)) != "READY":
                raise load.failure(f"expected READY, got {line!r}")
        window_start = time.time() + settings.warmup_s
        for load in loads:
            load.write_line(f"GO {window_start!r}")
        servers = {"upstream": self.upstream.pid} | self._gateway_pid(target)
        scraped = self.metrics_url if target == "gateway_metrics" else None
        scraping = _scraping(scraped) if scraped else contextlib.nullcontext()
        async with scraping:
            cpu = await _cpu_percent_over(servers, window_start, settings.duration_s)
        raws = [await _result(load, settings.duration_s + 30) for load in loads]
        for load in loads:
            await self.children.stop(load)
        return ThroughputResult(target, [LoadResult(**_known(LoadResult, raw)) for raw in raws], cpu)


Progress = Callable[[str], None]


def to_stderr(line: str) -> None:
    """The default progress: one line per step on stderr, so that stdout holds only the table."""
    print(f"bench: {line}", file=sys.stderr, flush=True)


async def run_bench(settings: Settings, command: str | None = None, progress: Progress = to_stderr) -> BenchResult:
    """Run every scenario; `progress` hears of each one as it starts and as it ends, with its headline figure."""
    result = BenchResult(
        settings=settings,
        machine=Machine.this(),
        command=command or shlex.join([sys.executable, "-m", "bench", *sys.argv[1:]]),
    )
    steps = len(TTFT_TARGETS) + len(THROUGHPUT_TARGETS) * settings.rounds
    step = 0

    def begin(what: str) -> float:
        nonlocal step
        step += 1
        progress(f"[{step}/{steps}] {what} ...")
        return time.monotonic()

    def end(began: float, figure: str) -> None:
        progress(f"[{step}/{steps}] {figure} ({time.monotonic() - began:.1f} s)")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        progress("starting the fake upstream and the gateway ...")
        async with Stack.start(Path(tmp), settings) as stack:
            result.pinning = stack.cpus.describe()
            for target in TTFT_TARGETS:
                calls = settings.ttft_warmup + settings.ttft_requests
                began = begin(f"time to first token, {target}: {calls} sequential calls")
                ttft = result.ttft[target] = await stack.ttft(target, settings)
                end(began, f"TTFT p50 {ttft.p50_ms:.2f} ms")
            window = f"{settings.warmup_s:g} s warm-up + {settings.duration_s:g} s at c={settings.concurrency}"
            for n in range(1, settings.rounds + 1):
                # The gateway sides run in reverse order every other round: whichever runs later does worse
                # on a busy machine, and that must not pass for the cost of metrics (or of httpx).
                order = THROUGHPUT_TARGETS if n % 2 else (*THROUGHPUT_TARGETS[:1], *reversed(THROUGHPUT_TARGETS[1:]))
                for target in order:
                    began = begin(f"throughput round {n}/{settings.rounds}, {target}: {window}")
                    throughput = await stack.throughput(target, settings)
                    result.throughput.setdefault(target, []).append(throughput)
                    end(began, f"{throughput.tokens_per_s:,.0f} tokens/s")
            result.gateway_peak_rss_bytes = peak_rss_bytes(stack.gateway.pid)
    return result


async def _start_gateway(
    children: Children,
    workdir: Path,
    name: str,
    upstream_url: str,
    settings: Settings,
    cpus: CpuPlan,
    *,
    metrics: bool = False,
) -> tuple[Child, str, str | None]:
    """A gateway process in front of the upstream, SERVING: it, its address and, with `metrics`, its
    /metrics URL. Both listeners bind port 0; the gateway says which ports it got."""
    config = workdir / f"{name}.yaml"
    raw = _gateway_config(upstream_url, settings)
    if metrics:
        raw["metrics"] = {"listen": "127.0.0.1:0"}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    args = ("--config", str(config), "--listen", "127.0.0.1:0")
    gateway = await children.start(name, "server", *args, stdout=False, cpus=cpus.gateway)
    address = await _wait_listening(gateway)
    await _wait_serving(gateway, address)
    metrics_url = None
    if metrics:  # its line comes before the "listening on" one
        found = _METRICS_ON.search(gateway.stderr_path.read_text(errors="replace"))
        if found is None:
            raise gateway.failure("did not say where /metrics is")
        metrics_url = found[1]
    return gateway, address, metrics_url


@contextlib.asynccontextmanager
async def _scraping(url: str) -> AsyncIterator[None]:
    """Scrape `url` every _SCRAPE_INTERVAL_S while the block runs, as Prometheus would; a failed scrape
    fails the bench (the metrics listener must keep answering under load)."""

    async def scrape() -> None:
        async with httpx.AsyncClient() as client:
            while True:
                (await client.get(url, timeout=10.0)).raise_for_status()
                await asyncio.sleep(_SCRAPE_INTERVAL_S)

    task = asyncio.create_task(scrape())
    try:
        yield
    finally:
        if task.done():
            task.result()  # raises what failed the scrape
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _gateway_config(upstream_url: str, settings: Settings) -> dict[str, Any]:
    providers = {"bench": "upstream", "bench-httpx": "upstream-httpx"}
    return {
        "grace_period_s": _GATEWAY_GRACE_S,
        "providers": [
            {"name": "upstream", "kind": "openai", "base_url": upstream_url},  # transport: aiohttp, the default
            {"name": "upstream-httpx", "kind": "openai", "base_url": upstream_url, "transport": "httpx"},
        ],
        "models": [
            {"name": f"{prefix}-{n}", "provider": provider, "upstream_model": f"tokens-{n}"}
            for prefix, provider in providers.items()
            for n in sorted({_TTFT_MODEL_TOKENS, settings.tokens})
        ],
    }


# server/app.py's start-up line: "listening on HOST:PORT (...)", with the port the kernel chose for port 0.
_LISTENING = re.compile(r" listening on (\S+:\d+) ")
# And before it, with metrics on: "metrics on http://HOST:PORT/metrics".
_METRICS_ON = re.compile(r" metrics on (http://\S+:\d+/metrics)")


async def _wait_listening(gateway: Child) -> str:
    """The address the gateway says it bound (it listens on port 0: a port picked here could be taken first)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while gateway.process.returncode is None and time.monotonic() < deadline:
        if found := _LISTENING.search(gateway.stderr_path.read_text(errors="replace")):
            return found[1]
        await asyncio.sleep(_POLL_INTERVAL_S)
    if gateway.process.returncode is None:
        raise gateway.failure(f"did not say where it listens within {READY_TIMEOUT_S:.0f} s")
    raise gateway.failure("exited before it listened")


async def _wait_serving(gateway: Child, address: str) -> None:
    """Poll the gateway's health service until it answers SERVING; BenchError if it exits or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    request = health_pb2.HealthCheckRequest(service="")
    async with grpc.aio.insecure_channel(address) as channel:
        # By method path: types-grpcio-health-checking's HealthStub declares no methods.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while gateway.process.returncode is None and time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                if (await check(request, timeout=1.0)).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(_POLL_INTERVAL_S)
    if gateway.process.returncode is None:
        raise gateway.failure(f"not SERVING on {address} within {READY_TIMEOUT_S:.0f} s")
    await gateway.process.wait()
    raise gateway.failure(f"exited before it was SERVING on {address}")


async def _cpu_percent_over(pids: dict[str, int], start: float, duration_s: float) -> dict[str, float]:
    """CPU% (100 = one core) of each process, and of the whole "machine", over [start, start + duration_s].

    `start` is a time.time().
    """
    await asyncio.sleep(max(0.0, start - time.time()))
    before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"machine": machine_cpu_seconds()}
    began = time.monotonic()
    await asyncio.sleep(duration_s)
    elapsed = time.monotonic() - began
    after = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"machine": machine_cpu_seconds()}
    return {name: 100 * (after[name] - before[name]) / elapsed for name in before}


async def _result(child: Child, timeout: float) -> dict[str, Any]:
    """The JSON line a load process prints last, once it has exited with 0."""
    line = await child.read_line(timeout)
    if await child.wait(timeout=10) != 0:
        raise child.failure("failed")
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise child.failure(f"printed {line[:200]!r}, not a JSON result") from exc
    if not isinstance(raw, dict):
        raise child.failure(f"printed {line[:200]!r}, not a JSON object")
    return raw


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of `raw` that are fields of the dataclass `cls` (a load process also prints derived values)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}
