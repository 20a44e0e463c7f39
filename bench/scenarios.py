"""Running a bench: every side on the same fake upstream, one scenario after another, each a progress line.

    result = await run_bench(settings)

The scenarios, in this order (each side is a Peer of bench/stack.py; a side that cannot run here, such as
LiteLLM before `make bench-peers`, is left out and named in `result.absent`):

    1. time to first token at c=1, sequential calls, every side;
    2. throughput at c=`concurrency` for a fixed window, `rounds` rounds: tokens/s, each proxy's CPU time
       per token (its process group, read from /proc), and TTFT / stream time p50 and p99 under that load;
       then `rounds` paired rounds of each PAIRABLE variant (metrics, tracing, asyncio, baseline), each
       window shared with the plain gateway, both with their own load, so that their difference is the
       variant's and not the machine's;
    3. the same once at c=`concurrency_high`;
    4. bytes on the wire per token and streams per connection: a fixed number of streams through a
       counting TCP relay (SSE and gRPC);
    5. Generate against StreamGenerate for the same paced reply (the upstream sends a token every
       `paced_ms`): time to first token and to the whole reply;
    6. py-spy on the gateway under the c=`concurrency` load: its top frames;
    7. RSS of each proxy with `hold_streams` streams open at once (last: it leaves the proxies bigger).

Every child is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import Child, cpu_seconds, group_cpu_seconds, group_rss_bytes, machine_cpu_seconds, peak_rss_bytes
from bench.profile import ProfileUnavailable, record
from bench.relay import CountingRelay
from bench.results import (
    PAIRABLE,
    TARGETS,
    BenchResult,
    HoldResult,
    LoadResult,
    Machine,
    Settings,
    ThroughputResult,
    TtftResult,
    WireResult,
)
from bench.stack import HOLD_PROMPT, Peer, Stack

__all__ = [
    "HIGH_TARGETS",
    "HOLD_TARGETS",
    "THROUGHPUT_TARGETS",
    "TTFT_TARGETS",
    "WIRE_TARGETS",
    "Progress",
    "run_bench",
    "to_stderr",
]

_TTFT_TOKENS = 1
# How often the gateway with metrics on is scraped during a throughput window (Prometheus's default is 15 s).
_SCRAPE_INTERVAL_S = 1.0
# After a window, streams still running get this long to end.
_DRAIN_S = 5.0
# The c=concurrency_high latency: this many streams per concurrent slot, so the first wave starts together
# and the next ones start as streams end. A fixed count, not a window: a proxy that takes 20 s to answer
# 256 streams gets all its TTFTs counted, not only those that fell inside a window.
_WAVES = 2

TTFT_TARGETS = (
    "direct",
    "floor",
    "gateway",
    "gateway-demo",
    "gateway_workers",
    "gateway_metrics",
    "gateway_tracing",
    "gateway_asyncio",
    "gateway_baseline",
    "litellm",
)
# Each round in this order; the gateway's variants run in reverse every other round (whichever runs later
# does worse on a busy machine, and that must not pass for the cost of a lever). The PAIRABLE variants
# (metrics, tracing, asyncio, baseline) run in paired rounds of their own instead, after these.
THROUGHPUT_TARGETS = (
    "direct",
    "floor",
    "litellm",
    "gateway",
    "gateway_metrics",
    "gateway_tracing",
    "gateway_asyncio",
    "gateway-httpx",
    "gateway_baseline",
    "gateway_workers",
)
HIGH_TARGETS = ("direct", "floor", "gateway", "gateway_baseline", "gateway_workers", "litellm")
WIRE_TARGETS = ("direct", "floor", "gateway", "gateway_baseline", "litellm")
HOLD_TARGETS = ("floor", "gateway", "litellm")
_FIXED_ORDER = 3  # direct, floor, litellm stay first in every round

Progress = Callable[[str], None]


def to_stderr(line: str) -> None:
    """The default progress: one line per step on stderr, so that stdout holds only the tables."""
    print(f"bench: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class _Step:
    kind: str  # one of SCENARIOS
    what: str
    run: Callable[[], Awaitable[str]]  # returns the headline figure


async def run_bench(settings: Settings, command: str | None = None, progress: Progress = to_stderr) -> BenchResult:
    """Run every scenario; `progress` hears of each one as it starts and as it ends, with its headline figure."""
    result = BenchResult(
        settings=settings,
        machine=Machine.this(),
        command=command or shlex.join([sys.executable, "-m", "bench", *sys.argv[1:]]),
    )
    sides = set(settings.sides or TARGETS) | {"gateway"}
    if not settings.litellm:
        sides.discard("litellm")
        result.absent["litellm"] = "left out (--no-litellm)"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        progress("starting the fake upstream, the floor, the gateways and the peers ...")
        async with Stack.start(Path(tmp), settings, sides) as stack:
            result.pinning = stack.cpus.describe()
            result.absent.update(stack.absent)
            result.workers = stack.workers
            for name, why in stack.absent.items():
                progress(f"{name}: {why}")
            steps = _steps(stack, settings, result, Path(tmp))
            for n, step in enumerate(steps, 1):
                progress(f"[{n}/{len(steps)}] {step.what} ...")
                began = time.monotonic()
                figure = await step.run()
                progress(f"[{n}/{len(steps)}] {figure} ({time.monotonic() - began:.1f} s)")
            if gateway := stack.peers["gateway"].leader:
                result.gateway_peak_rss_bytes = peak_rss_bytes(gateway.pid)
    result.finished = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return result


def _steps(stack: Stack, settings: Settings, result: BenchResult, workdir: Path) -> list[_Step]:
    peers = stack.peers
    steps: list[_Step] = []
    calls = settings.ttft_warmup + settings.ttft_requests

    def ttft_step(peer: Peer) -> _Step:
        async def run() -> str:
            ttft = result.ttft[peer.name] = await _ttft(stack, peer, settings, model=peer.model(_TTFT_TOKENS))
            return f"TTFT p50 {ttft.p50_ms:.2f} ms"

        return _Step("ttft", f"time to first token, {peer.name}: {calls} sequential calls", run)

    def throughput_step(peer: Peer, n: int) -> _Step:
        async def run() -> str:
            done = await _throughput(stack, peer, settings, settings.concurrency, _DRAIN_S)
            result.throughput.setdefault(peer.name, []).append(done)
            failed = f", {done.errors} FAILED: {_first_error(done)}" if done.errors else ""
            return f"{done.tokens_per_s:,.0f} tokens/s, {done.proxy_us_per_token:.0f} µs CPU/token{failed}"

        window = f"{settings.warmup_s:g} s warm-up + {settings.duration_s:g} s at c={settings.concurrency}"
        return _Step("throughput", f"throughput round {n}/{settings.rounds}, {peer.name}: {window}", run)

    def high_step(peer: Peer) -> _Step:
        async def run() -> str:
            done = result.throughput_high[peer.name] = await _waves(stack, peer, settings)
            failed = f", {done.errors} FAILED: {_first_error(done)}" if done.errors else ""
            return f"TTFT p50 {done.ttft_ms(50):.1f} ms, p99 {done.ttft_ms(99):.1f} ms{failed}"

        c = settings.concurrency_high
        return _Step("high", f"latency at c={c}, {peer.name}: {_WAVES * c} streams, {c} at a time", run)

    def wire_step(peer: Peer) -> _Step:
        async def run() -> str:
            wire = result.wire[peer.name] = await _wire(stack, peer, settings)
            return f"{wire.bytes_per_token:.1f} bytes/token, {wire.connections} connection(s)"

        return _Step("wire", f"bytes on the wire, {peer.name}: {settings.wire_streams} streams through a relay", run)

    def paced_step(kind: str) -> _Step:
        async def run() -> str:
            paced = result.paced[kind] = await _ttft(
                stack,
                peers["gateway"],
                settings,
                model="bench-paced",
                prompt=" ".join(["w"] * settings.paced_tokens),
                unary=kind == "unary",
                requests=settings.paced_requests,
                warmup=1,
            )
            return f"first token {paced.p50_ms:.1f} ms, whole reply {_median(paced.total_ms):.1f} ms"

        method = "Generate" if kind == "unary" else "StreamGenerate"
        reply = f"{settings.paced_tokens} tokens {settings.paced_ms} ms apart"
        return _Step("paced", f"{method}, gateway: {settings.paced_requests} calls for a reply of {reply}", run)

    def profile_step() -> _Step:
        async def run() -> str:
            result.profile_top = await _profile(stack, peers["gateway"], settings, workdir)
            return result.profile_top[0]

        return _Step(
            "profile", f"py-spy on the gateway under c={settings.concurrency} load: {settings.profile_s:g} s", run
        )

    def hold_step(peer: Peer, streams: int) -> _Step:
        async def run() -> str:
            held = await _hold(stack, peer, settings, streams)
            result.hold.setdefault(peer.name, []).append(held)
            return f"{held.opened:,} open, RSS {held.rss_bytes / 2**20:.0f} MiB"

        return _Step("hold", f"{streams:,} concurrent streams, {peer.name}: RSS", run)

    def paired_step(variant: Peer, n: int) -> _Step:
        async def run() -> str:
            together = asyncio.Barrier(2)
            plain, other = await asyncio.gather(
                *(_throughput(stack, p, settings, settings.concurrency, _DRAIN_S, together=together) for p in pair)
            )
            result.beside.setdefault(other.target, []).append(plain)
            result.throughput.setdefault(other.target, []).append(other)
            return f"{plain.proxy_us_per_token:.1f} against {other.proxy_us_per_token:.1f} µs CPU/token"

        pair = (peers["gateway"], variant)
        window = f"{settings.warmup_s:g} s warm-up + {settings.duration_s:g} s at c={settings.concurrency} each"
        return _Step("throughput", f"paired round {n}/{settings.rounds}, gateway and {variant.name}: {window}", run)

    steps += [ttft_step(peers[t]) for t in TTFT_TARGETS if t in peers]
    solo = [t for t in THROUGHPUT_TARGETS if t not in PAIRABLE and t in peers]
    paired = [t for t in PAIRABLE if t in peers]
    if solo == ["gateway"] and paired:
        solo = []  # the gateway's own rounds would measure nothing a paired variant is compared with
    for n in range(1, settings.rounds + 1):
        order = solo if n % 2 else solo[:_FIXED_ORDER] + solo[_FIXED_ORDER:][::-1]
        steps += [throughput_step(peers[t], n) for t in order]
    for n in range(1, settings.rounds + 1):
        steps += [paired_step(peers[t], n) for t in paired]
    steps += [high_step(peers[t]) for t in HIGH_TARGETS if t in peers]
    steps += [wire_step(peers[t]) for t in WIRE_TARGETS if t in peers]
    steps += [paced_step("stream"), paced_step("unary")]
    if settings.profile_s > 0:
        steps.append(profile_step())
    steps += [hold_step(peers[t], n) for n in settings.hold_streams for t in HOLD_TARGETS if t in peers]
    return [step for step in steps if not settings.only or step.kind in settings.only]


def _first_error(result: ThroughputResult) -> str:
    return next((load.first_error for load in result.loads if load.first_error), "")[:200]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _load_args(peer: Peer, model: str, address: str | None = None) -> list[str]:
    args = ["--protocol", peer.protocol, "--target", peer.name, "--address", address or peer.address]
    args += ["--model", model]
    return args + (["--api-key", peer.api_key] if peer.api_key else [])


async def _ttft(
    stack: Stack,
    peer: Peer,
    settings: Settings,
    *,
    model: str,
    prompt: str = "",
    unary: bool = False,
    requests: int | None = None,
    warmup: int | None = None,
) -> TtftResult:
    requests = settings.ttft_requests if requests is None else requests
    warmup = settings.ttft_warmup if warmup is None else warmup
    args = ["ttft", "--requests", str(requests), "--warmup", str(warmup), *_load_args(peer, model)]
    args += (["--prompt", prompt] if prompt else []) + (["--unary"] if unary else [])
    leader = peer.leader

    def cpu() -> float:
        return group_cpu_seconds(leader.pid) if leader is not None else math.nan

    before = cpu()
    child = await stack.children.start(f"load-ttft-{peer.name}", "bench.load", *args, cpus=stack.load_cpus(peer.name))
    raw = await _result(child, 120 + (requests + warmup) * 2.0)
    per_call = 1e6 * (cpu() - before) / (requests + warmup)
    await stack.children.stop(child)
    result = TtftResult(**_known(TtftResult, raw), proxy_cpu_us_per_call=per_call)
    if not result.samples_ms:
        raise child.failure(f"no request succeeded; first error: {result.first_error}")
    return result


def _split(concurrency: int, processes: int) -> list[int]:
    base, extra = divmod(concurrency, processes)
    return [base + (1 if i < extra else 0) for i in range(processes) if base or i < extra]


async def _throughput(
    stack: Stack,
    peer: Peer,
    settings: Settings,
    concurrency: int,
    drain_s: float,
    during: _During | None = None,
    together: asyncio.Barrier | None = None,
) -> ThroughputResult:
    """One round: `settings.processes` load processes against `peer`, measuring the same window.

    `together`: a paired round's barrier; the window opens once every side sharing it is ready."""
    base = ["throughput", *_load_args(peer, peer.model(settings.tokens)), "--sync"]
    options = ["--duration", str(settings.duration_s), "--warmup", str(settings.warmup_s), "--drain", str(drain_s)]
    options += ["--expect", str(settings.tokens)]
    loads = [
        await stack.children.start(
            f"load-{peer.name}-{i}",
            "bench.load",
            *base,
            *options,
            "--concurrency",
            str(n),
            stdin=True,
            cpus=stack.load_cpus(peer.name),
        )
        for i, n in enumerate(_split(concurrency, settings.processes))
    ]
    for load in loads:
        if (line := await load.read_line(60)) != "READY":
            raise load.failure(f"expected READY, got {line!r}")
    if together is not None:
        await together.wait()
    window_start = time.time() + settings.warmup_s
    for load in loads:
        load.write_line(f"GO {window_start!r}")
    readers: dict[str, Callable[[], float]] = {"upstream": lambda: cpu_seconds(stack.upstream.pid)}
    if peer.leader is not None:
        pgid = peer.leader.pid
        readers["proxy"] = lambda: group_cpu_seconds(pgid)
    scraping = _scraping(stack.metrics_url) if peer.name == "gateway_metrics" and stack.metrics_url else None
    async with scraping or contextlib.nullcontext(), during or contextlib.nullcontext():
        cpu = await _cpu_percent_over(readers, window_start, settings.duration_s)
    raws = [await _result(load, settings.duration_s + drain_s + 60) for load in loads]
    for load in loads:
        await stack.children.stop(load)
    return ThroughputResult(peer.name, [LoadResult(**_known(LoadResult, raw)) for raw in raws], cpu)


async def _waves(stack: Stack, peer: Peer, settings: Settings) -> ThroughputResult:
    """`_WAVES` x concurrency_high streams, concurrency_high at a time, over `settings.processes` processes."""
    base = ["fixed", *_load_args(peer, peer.model(settings.tokens)), "--sync"]
    loads = [
        await stack.children.start(
            f"load-high-{peer.name}-{i}",
            "bench.load",
            *base,
            *("--concurrency", str(n), "--streams", str(_WAVES * n)),
            stdin=True,
            cpus=stack.load_cpus(peer.name),
        )
        for i, n in enumerate(_split(settings.concurrency_high, settings.processes))
    ]
    for load in loads:
        if (line := await load.read_line(60)) != "READY":
            raise load.failure(f"expected READY, got {line!r}")
    readers: dict[str, Callable[[], float]] = {"upstream": lambda: cpu_seconds(stack.upstream.pid)}
    if peer.leader is not None:
        pgid = peer.leader.pid
        readers["proxy"] = lambda: group_cpu_seconds(pgid)
    before = {name: read() for name, read in readers.items()}
    began = time.monotonic()
    for load in loads:
        load.write_line(f"GO {time.time()!r}")
    raws = [await _result(load, 600) for load in loads]
    elapsed = time.monotonic() - began
    cpu = {name: 100 * (read() - before[name]) / elapsed for name, read in readers.items()}
    for load in loads:
        await stack.children.stop(load)
    return ThroughputResult(peer.name, [LoadResult(**_known(LoadResult, raw)) for raw in raws], cpu)


class _During:
    """Something that runs alongside a throughput window (the profiler), started when the window opens."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, list[str]]]) -> None:
        self._run = run
        self._task: asyncio.Task[list[str]] | None = None
        self.lines: list[str] = []

    async def __aenter__(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self.lines = await self._task


async def _profile(stack: Stack, peer: Peer, settings: Settings, workdir: Path) -> list[str]:
    assert peer.leader is not None
    pid = peer.leader.pid

    async def sample() -> list[str]:
        await asyncio.sleep(settings.warmup_s)
        try:
            return await record(pid, min(settings.profile_s, settings.duration_s), workdir / "py-spy.txt")
        except ProfileUnavailable as exc:
            return [f"no profile: {exc}"]

    during = _During(sample)
    longer = dataclasses.replace(settings, duration_s=max(settings.duration_s, settings.profile_s + 1))
    await _throughput(stack, peer, longer, settings.concurrency, _DRAIN_S, during)
    return during.lines


async def _wire(stack: Stack, peer: Peer, settings: Settings) -> WireResult:
    async with CountingRelay(*peer.host_port) as relay:
        address = relay.address if peer.protocol == "grpc" else f"http://{relay.address}/v1"
        args = ["fixed", *_load_args(peer, peer.model(settings.tokens), address)]
        args += ["--streams", str(settings.wire_streams), "--concurrency", str(settings.concurrency)]
        child = await stack.children.start(f"load-wire-{peer.name}", "bench.load", *args)
        raw = await _result(child, 120 + settings.wire_streams)
        await stack.children.stop(child)
    if raw["errors"] or not raw["tokens"]:
        raise child.failure(f"streams failed on the wire: {raw['first_error']}")
    # wait_ready's stream went over the relay too: counted in streams and tokens alike.
    return WireResult(
        peer.name,
        peer.protocol,
        streams=int(raw["streams"]) + 1,
        tokens=int(raw["tokens"]) + settings.tokens,
        bytes_up=relay.bytes_up,
        bytes_down=relay.bytes_down,
        connections=relay.connections,
    )


async def _hold(stack: Stack, peer: Peer, settings: Settings, streams: int) -> HoldResult:
    assert peer.leader is not None
    pgid = peer.leader.pid
    idle = group_rss_bytes(pgid)
    timeout = 60.0 + streams * 0.02
    args = ["hold", *_load_args(peer, peer.hold_model), "--prompt", HOLD_PROMPT]
    args += ["--streams", str(streams), "--open-timeout", str(timeout)]
    child = await stack.children.start(
        f"load-hold-{peer.name}", "bench.load", *args, stdin=True, cpus=stack.load_cpus(peer.name)
    )
    word, opened, seconds = (await child.read_line(timeout + 60)).split(" ")
    if word != "OPEN":
        raise child.failure(f"expected 'OPEN <n> <s>', got {word!r}")
    rss = group_rss_bytes(pgid)
    child.write_line("STOP")
    raw = await _result(child, 120)
    await stack.children.stop(child)
    return HoldResult(peer.name, streams, int(opened), float(seconds), rss, idle, str(raw.get("first_error", "")))


@contextlib.asynccontextmanager
async def _scraping(url: str) -> AsyncIterator[None]:
    """Scrape `url` every _SCRAPE_INTERVAL_S while the block runs, as Prometheus would; a failed scrape
    fails the bench (the metrics listener must keep answering under load)."""

    async def scrape() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as reply:
                    reply.raise_for_status()
                    await reply.read()
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


async def _cpu_percent_over(
    readers: dict[str, Callable[[], float]], start: float, duration_s: float
) -> dict[str, float]:
    """CPU% (100 = one core) of each reader's processes, and of the whole "machine", over the window
    [start, start + duration_s]; `start` is a time.time()."""
    readers = readers | {"machine": machine_cpu_seconds}
    await asyncio.sleep(max(0.0, start - time.time()))
    before = {name: read() for name, read in readers.items()}
    began = time.monotonic()
    await asyncio.sleep(duration_s)
    elapsed = time.monotonic() - began
    after = {name: read() for name, read in readers.items()}
    return {name: 100 * (after[name] - before[name]) / elapsed for name in before}


async def _result(child: Child, timeout: float) -> dict[str, Any]:
    """The JSON line a load process prints last, once it has exited with 0."""
    line = await child.read_line(timeout)
    if await child.wait(timeout=30) != 0:
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
