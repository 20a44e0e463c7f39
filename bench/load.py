"""python -m bench.load: one load-generator process; it prints its result as one JSON line on stdout.

    python -m bench.load ttft --protocol grpc --target gateway --address 127.0.0.1:50051 --model bench-1
    python -m bench.load throughput --protocol sse --target direct --address http://127.0.0.1:8000/v1 \\
        --model tokens-64 --concurrency 16 --duration 10 --warmup 2
    python -m bench.load fixed --protocol grpc ... --streams 200 --concurrency 32
    python -m bench.load hold --protocol grpc ... --streams 5000

`ttft` sends sequential requests (concurrency 1) and reports the milliseconds to each first delta and to
each stream's end. `throughput` keeps `--concurrency` streams going and counts tokens, finished streams and
their times to first token inside a window. `fixed` runs exactly `--streams` streams (for counting the
bytes they cost on the wire). `hold` opens `--streams` streams, each of which receives one token and then
waits, prints `OPEN <opened> <seconds>` and keeps them open until a line `STOP` arrives on stdin.
With `--sync` (as `python -m bench` runs it) it prints READY once connected and waits for a line
"GO <unix time>" on stdin: the window starts at that time, so that several load processes measure the same
seconds; without it the window starts after `--warmup` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import asdict

from bench.clients import (
    HOLD_TIMEOUT_S,
    PROMPT,
    STREAM_TIMEOUT_S,
    TRANSPORT_ERRORS,
    GatewayClient,
    SseClient,
    StreamClient,
    StreamFailed,
    Tally,
)
from bench.results import LoadResult, TtftResult, percentile

__all__ = ["main"]

# A worker whose stream failed waits this long before the next, so a dead server is not a busy loop.
ERROR_PAUSE_S = 0.01


def _client(args: argparse.Namespace, connections: int) -> StreamClient:
    timeout_s = HOLD_TIMEOUT_S if args.scenario == "hold" else STREAM_TIMEOUT_S
    if args.protocol == "sse":
        return SseClient(
            args.address,
            args.model,
            connections=connections,
            prompt=args.prompt,
            api_key=args.api_key,
            timeout_s=timeout_s,
        )
    return GatewayClient(args.address, args.model, prompt=args.prompt, unary=args.unary, timeout_s=timeout_s)


async def run_ttft(client: StreamClient, target: str, *, requests: int, warmup: int) -> TtftResult:
    await client.wait_ready()
    samples: list[float] = []
    totals: list[float] = []
    errors = 0
    first_error = ""
    for i in range(warmup + requests):
        start = time.perf_counter()
        try:
            first_s, _ = await client.stream(Tally())
        except TRANSPORT_ERRORS as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            continue
        if i >= warmup:
            samples.append(first_s * 1000)
            totals.append((time.perf_counter() - start) * 1000)
    return TtftResult(target, samples, errors, first_error, totals)


class _Window:
    """The measurement window of one throughput run, shared by its workers."""

    def __init__(self, expect: int | None) -> None:
        self.expect = expect  # tokens every stream must deliver, when known
        self.open = False
        self.opened_at = 0.0  # perf_counter() times
        self.closed_at = float("inf")
        self.stopping = False
        self.stream_ms: list[float] = []
        self.ttft_ms: list[float] = []
        self.first_error = ""


async def _worker(client: StreamClient, tally: Tally, window: _Window) -> None:
    while not window.stopping:
        start = time.perf_counter()
        try:
            first, tokens = await client.stream(tally)
            if window.expect is not None and tokens != window.expect:
                raise StreamFailed(f"a stream delivered {tokens} tokens, not {window.expect}")
        except TRANSPORT_ERRORS as exc:
            tally.errors += 1
            window.first_error = window.first_error or f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(ERROR_PAUSE_S)
            continue
        tally.streams += 1
        if window.open:
            window.stream_ms.append((time.perf_counter() - start) * 1000)
        # A first token inside the window counts even if its stream ends after it (a slow proxy at c=256).
        if window.opened_at <= start + first <= window.closed_at:
            window.ttft_ms.append(first * 1000)


async def _window_start(sync: bool, warmup_s: float) -> float:
    """The time.monotonic() at which the window opens."""
    if not sync:
        return time.monotonic() + warmup_s
    print("READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    word, _, when = line.partition(" ")
    if word != "GO":
        raise SystemExit(f"bench.load: expected 'GO <unix time>' on stdin, got {line!r}")
    return time.monotonic() + (float(when) - time.time())


async def run_throughput(
    client: StreamClient,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    sync: bool,
    expect: int | None,
    drain_s: float,
) -> LoadResult:
    await client.wait_ready()
    start_at = await _window_start(sync, warmup_s)
    tally, window = Tally(), _Window(expect)
    workers = [asyncio.create_task(_worker(client, tally, window)) for _ in range(concurrency)]
    try:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        before = (tally.tokens, tally.streams, tally.errors, time.process_time(), time.perf_counter())
        window.open, window.opened_at = True, before[4]
        await asyncio.sleep(duration_s)
        window.open = False
        after = (tally.tokens, tally.streams, tally.errors, time.process_time(), time.perf_counter())
        window.closed_at = after[4]
        window.stopping = True
        _, pending = await asyncio.wait(workers, timeout=drain_s)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    if pending:
        window.first_error = window.first_error or f"{len(pending)} streams still running after the window"
    elapsed = after[4] - before[4]
    return LoadResult(
        concurrency=concurrency,
        elapsed_s=elapsed,
        tokens=after[0] - before[0],
        streams=after[1] - before[1],
        errors=after[2] - before[2],
        cpu_percent=100 * (after[3] - before[3]) / elapsed,
        stream_ms=window.stream_ms,
        first_error=window.first_error,
        ttft_ms=window.ttft_ms,
    )


async def run_fixed(client: StreamClient, *, streams: int, concurrency: int, sync: bool) -> dict[str, object]:
    """Exactly `streams` streams, `concurrency` at a time (the first `concurrency` start together): what they
    delivered, how long it took, and each stream's time to first token and to its end."""
    await client.wait_ready()  # one more stream (on the wire too: the caller counts it)
    if sync:
        await _window_start(sync, 0.0)
    tally = Tally()
    left = [streams]
    first_error = ""
    ttft_ms: list[float] = []
    stream_ms: list[float] = []

    async def worker() -> None:
        nonlocal first_error
        while left[0] > 0:
            left[0] -= 1
            start = time.perf_counter()
            try:
                first, _ = await client.stream(tally)
            except TRANSPORT_ERRORS as exc:
                tally.errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            tally.streams += 1
            ttft_ms.append(first * 1000)
            stream_ms.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, streams))))
    return {
        "concurrency": concurrency,
        "streams": tally.streams,
        "tokens": tally.tokens,
        "errors": tally.errors,
        "elapsed_s": time.perf_counter() - start,
        "cpu_percent": 0.0,
        "stream_ms": stream_ms,
        "ttft_ms": ttft_ms,
        "first_error": first_error,
    }


class _FirstToken(Tally):
    """A stream's tally that sets `event` at its first token (only `hold` uses it: not the per-token path)."""

    def __init__(self, event: asyncio.Event) -> None:
        self._event = event
        self._tokens = 0
        super().__init__()

    @property
    def tokens(self) -> int:
        return self._tokens

    @tokens.setter
    def tokens(self, value: int) -> None:
        self._tokens = value
        if value:
            self._event.set()


async def run_hold(client: StreamClient, *, streams: int, opening: int, open_timeout_s: float) -> dict[str, object]:
    """Open `streams` streams (at most `opening` being opened at once), each until its first token; report
    when all are open, wait for STOP on stdin, then cancel them all. (No wait_ready: its stream would hold.)"""
    gate = asyncio.Semaphore(opening)
    held: list[asyncio.Task[tuple[float, int]]] = []
    errors: list[str] = []

    async def open_one() -> bool:
        async with gate:
            event = asyncio.Event()
            task = asyncio.create_task(client.stream(_FirstToken(event)))
            held.append(task)
            waiting = asyncio.create_task(event.wait())
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if event.is_set():
                return True
            errors.append(repr(task.exception()) if not task.cancelled() else "cancelled")
            return False

    start = time.perf_counter()
    openers = [asyncio.create_task(open_one()) for _ in range(streams)]
    done, _ = await asyncio.wait(openers, timeout=open_timeout_s)
    opened = sum(1 for task in done if not task.cancelled() and task.exception() is None and task.result())
    seconds = time.perf_counter() - start
    print(f"OPEN {opened} {seconds:.3f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for task in [*openers, *held]:
        task.cancel()
    await asyncio.gather(*openers, *held, return_exceptions=True)
    return {"streams": streams, "opened": opened, "open_s": seconds, "first_error": errors[0] if errors else ""}


def _finite(value: float) -> float | None:
    """A statistic for JSON: None (null) where there were no samples, so that the line stays strict JSON."""
    return None if math.isnan(value) else value


async def _run(args: argparse.Namespace) -> dict[str, object]:
    connections = {"throughput": "concurrency", "fixed": "concurrency", "hold": "streams"}
    client = _client(args, getattr(args, connections.get(args.scenario, ""), 1))
    try:
        if args.scenario == "ttft":
            ttft = await run_ttft(client, args.target, requests=args.requests, warmup=args.warmup)
            measured = {k: v for k, v in asdict(ttft).items() if k != "proxy_cpu_us_per_call"}  # the bench's to read
            return {**measured, "p50_ms": _finite(ttft.p50_ms), "p99_ms": _finite(ttft.p99_ms)}
        if args.scenario == "fixed":
            return await run_fixed(client, streams=args.streams, concurrency=args.concurrency, sync=args.sync)
        if args.scenario == "hold":
            return await run_hold(client, streams=args.streams, opening=args.opening, open_timeout_s=args.open_timeout)
        load = await run_throughput(
            client,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            sync=args.sync,
            expect=args.expect,
            drain_s=args.drain,
        )
        rates = {"tokens_per_s": load.tokens / load.elapsed_s, "streams_per_s": load.streams / load.elapsed_s}
        return {**asdict(load), **rates, "stream_p50_ms": _finite(percentile(load.stream_ms, 50))}
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="scenario", required=True)
    ttft = commands.add_parser("ttft", help="sequential requests: time to first token")
    ttft.add_argument("--requests", type=int, default=300, help="measured requests (default: %(default)s)")
    ttft.add_argument("--warmup", type=int, default=30, help="requests before those (default: %(default)s)")
    throughput = commands.add_parser("throughput", help="concurrent streams for a fixed time")
    throughput.add_argument("--concurrency", type=int, default=16, help="concurrent streams (default: %(default)s)")
    throughput.add_argument("--duration", type=float, default=10.0, help="window, seconds (default: %(default)s)")
    throughput.add_argument("--warmup", type=float, default=2.0, help="seconds before it (default: %(default)s)")
    throughput.add_argument("--sync", action="store_true", help="print READY, then wait for 'GO <unix time>'")
    throughput.add_argument("--expect", type=int, help="tokens every stream must deliver (else it is an error)")
    throughput.add_argument("--drain", type=float, default=5.0, help="seconds streams get to end after the window")
    fixed = commands.add_parser("fixed", help="exactly --streams streams, --concurrency at a time")
    fixed.add_argument("--streams", type=int, default=100, help="streams (default: %(default)s)")
    fixed.add_argument("--concurrency", type=int, default=32, help="concurrent streams (default: %(default)s)")
    fixed.add_argument("--sync", action="store_true", help="print READY, then wait for a line 'GO ...'")
    hold = commands.add_parser("hold", help="open --streams streams and keep them open until STOP on stdin")
    hold.add_argument("--streams", type=int, default=1000, help="streams (default: %(default)s)")
    hold.add_argument("--opening", type=int, default=200, help="streams opened at once (default: %(default)s)")
    hold.add_argument("--open-timeout", type=float, default=120.0, help="seconds (default: %(default)s)")
    for sub in (ttft, throughput, fixed, hold):
        sub.add_argument("--protocol", choices=("sse", "grpc"), required=True, help="OpenAI SSE or AIService")
        sub.add_argument("--target", required=True, help="what the load goes to, for the result")
        sub.add_argument("--address", required=True, help="base URL (sse) or HOST:PORT (grpc)")
        sub.add_argument("--model", required=True, help="the model name the target knows")
        sub.add_argument("--prompt", default=PROMPT, help="the user message (an echo model streams its words)")
        sub.add_argument("--api-key", default="", help="sse: the bearer token (LiteLLM's master key)")
        sub.add_argument("--unary", action="store_true", help="grpc: Generate instead of StreamGenerate")
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args))
    print(json.dumps(result, separators=(",", ":"), allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
