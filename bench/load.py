"""python -m bench.load: one load-generator process; it prints its result as one JSON line on stdout.

    python -m bench.load ttft --target gateway --address 127.0.0.1:50051 --model bench-1
    python -m bench.load throughput --target direct --address http://127.0.0.1:8000/v1 --model tokens-64 \\
        --concurrency 16 --duration 10 --warmup 2

`ttft` sends sequential requests (concurrency 1) and reports the milliseconds to each first delta.
`throughput` keeps `--concurrency` streams going and counts tokens and finished streams inside a window.
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

from bench.clients import TRANSPORT_ERRORS, DirectClient, GatewayClient, StreamClient, StreamFailed, Tally
from bench.results import TARGETS, LoadResult, TtftResult, percentile

__all__ = ["main"]

# After the window, streams still running get this long to finish before they are cancelled.
DRAIN_TIMEOUT_S = 5.0
# A worker whose stream failed waits this long before the next, so a dead server is not a busy loop.
ERROR_PAUSE_S = 0.01


def _client(target: str, address: str, model: str, connections: int) -> StreamClient:
    if target == "direct":
        return DirectClient(address, model, connections=connections)
    return GatewayClient(address, model)


async def run_ttft(client: StreamClient, target: str, *, requests: int, warmup: int) -> TtftResult:
    await client.wait_ready()
    samples: list[float] = []
    errors = 0
    first_error = ""
    for i in range(warmup + requests):
        try:
            first_s, _ = await client.stream(Tally())
        except TRANSPORT_ERRORS as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            continue
        if i >= warmup:
            samples.append(first_s * 1000)
    return TtftResult(target, samples, errors, first_error)


class _Window:
    """The measurement window of one throughput run, shared by its workers."""

    def __init__(self, expect: int | None) -> None:
        self.expect = expect  # tokens every stream must deliver, when known
        self.open = False
        self.stopping = False
        self.stream_ms: list[float] = []
        self.first_error = ""


async def _worker(client: StreamClient, tally: Tally, window: _Window) -> None:
    while not window.stopping:
        start = time.perf_counter()
        try:
            _, tokens = await client.stream(tally)
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
    client: StreamClient, *, concurrency: int, duration_s: float, warmup_s: float, sync: bool, expect: int | None
) -> LoadResult:
    await client.wait_ready()
    start_at = await _window_start(sync, warmup_s)
    tally, window = Tally(), _Window(expect)
    workers = [asyncio.create_task(_worker(client, tally, window)) for _ in range(concurrency)]
    try:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        before = (tally.tokens, tally.streams, tally.errors, time.process_time(), time.perf_counter())
        window.open = True
        await asyncio.sleep(duration_s)
        window.open = False
        after = (tally.tokens, tally.streams, tally.errors, time.process_time(), time.perf_counter())
        window.stopping = True
        _, pending = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT_S)
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
    )


def _finite(value: float) -> float | None:
    """A statistic for JSON: None (null) where there were no samples, so that the line stays strict JSON."""
    return None if math.isnan(value) else value


async def _run(args: argparse.Namespace) -> dict[str, object]:
    connections = args.concurrency if args.scenario == "throughput" else 1
    client = _client(args.target, args.address, args.model, connections)
    try:
        if args.scenario == "ttft":
            ttft = await run_ttft(client, args.target, requests=args.requests, warmup=args.warmup)
            return {**asdict(ttft), "p50_ms": _finite(ttft.p50_ms), "p99_ms": _finite(ttft.p99_ms)}
        load = await run_throughput(
            client,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            sync=args.sync,
            expect=args.expect,
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
    for sub in (ttft, throughput):
        sub.add_argument("--target", choices=TARGETS, required=True)
        sub.add_argument("--address", required=True, help="upstream base URL (direct) or gateway HOST:PORT")
        sub.add_argument("--model", required=True, help="tokens-N (direct) or the gateway's catalog name")
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args))
    print(json.dumps(result, separators=(",", ":"), allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
