"""python -m bench.fairness [--duration S] [--slots N] [--flood C]: one client floods, another sends steadily.

Separate processes: the fake upstream, the gateway (limits.max_concurrent_upstream = N slots, two clients
by token), and the load, which runs both clients for the same window: "flood" keeps C calls in flight at
once (C well above N, so that calls queue), "steady" sends one call at a time. Every call is a Generate of a
model whose upstream answer takes a fixed 50 ms, so a slot is held 50 ms a call.

Three runs, printed side by side: steady alone (its latency with no queue), both with the fair queue
(limits.queue_wait_s 30 s: a freed slot goes to the clients in turn), and both with the queue off
(queue_wait_s 0: the gateway's old behaviour, refusing at once). The figure to read is the steady client's
p99 latency with the flood, against its p99 alone: with the queue fair it stays within a few service times,
however many calls the flood has waiting; a FIFO queue would make it wait behind all of them
(flood's C - N waiting calls x 50 ms / N slots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.procs import Child, Children
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc

__all__ = ["main"]

TOKENS = {"flood": "flood-token-0123456789", "steady": "steady-token-0123456789"}
SERVICE_MODEL = "slow-first-token-50"  # the fake upstream answers after 50 ms
_READY_TIMEOUT_S = 30.0


def gateway_config(upstream_url: str, slots: int, queue_wait_s: float) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "limits": {"max_concurrent_upstream": slots, "queue_wait_s": queue_wait_s},
        "retry": {"max_attempts": 1},
        "auth": {"tokens": [{"name": name, "env": f"{name.upper()}_TOKEN"} for name in TOKENS]},
        "providers": [{"name": "fake", "kind": "openai", "base_url": upstream_url}],
        "models": [{"name": "m", "provider": "fake", "upstream_model": SERVICE_MODEL}],
    }


async def _wait_for(child: Child, pattern: str) -> str:
    """The first stderr line of `child` that contains `pattern` (the bench may poll; tests may not)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in child.stderr_path.read_text(errors="replace").splitlines():
            if pattern in line:
                return line
        if child.process.returncode is not None:  # it died: say so with its stderr
            break
        await asyncio.sleep(0.05)
    raise child.failure(f"never said {pattern!r}")


async def run(workdir: Path, args: argparse.Namespace, flood: int, queue_wait_s: float) -> dict[str, Any]:
    async with Children(workdir) as children:
        upstream = await children.start("upstream", "tests.fakes.openai_upstream", "--port", "0")
        _, _, port = (await upstream.read_line(_READY_TIMEOUT_S)).partition(" ")
        config = workdir / f"fairness-{flood}-{queue_wait_s}.yaml"
        raw = gateway_config(f"http://127.0.0.1:{port}/v1", args.slots, queue_wait_s)
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        gateway = await children.start("gateway", "server", "--config", str(config), stdout=False)
        address = (await _wait_for(gateway, "listening on ")).split("listening on ")[1].split(" ")[0]
        load = await children.start(
            "load", "bench.fairness", "--load", address, "--flood", str(flood), "--duration", str(args.duration)
        )
        result: dict[str, Any] = json.loads(await load.read_line(args.duration + 120))
        return result


async def load(address: str, flood: int, duration_s: float) -> dict[str, Any]:
    """Both clients for `duration_s`; each call's latency in ms and its outcome."""
    request = pb.GenerateRequest(model="m", messages=[pb.Message(role="user", content="hi")])
    latencies: dict[str, list[float]] = {"flood": [], "steady": []}
    refused: dict[str, int] = {"flood": 0, "steady": 0}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AIServiceStub(channel)
        end = time.monotonic() + duration_s

        async def client(name: str) -> None:
            auth = (("authorization", f"Bearer {TOKENS[name]}"),)
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    await stub.Generate(request, metadata=auth, timeout=60)
                except grpc.aio.AioRpcError:
                    refused[name] += 1
                else:
                    latencies[name].append((time.perf_counter() - start) * 1000)

        await asyncio.gather(*(client("flood") for _ in range(flood)), client("steady"))
    return {"latencies_ms": latencies, "refused": refused}


def _summary(result: dict[str, Any], name: str) -> str:
    samples = sorted(result["latencies_ms"][name])
    if not samples:
        return f"{'-':>8} {'-':>8} {0:>6} {result['refused'][name]:>7}"
    p50 = statistics.median(samples)
    p99 = samples[min(int(len(samples) * 0.99), len(samples) - 1)]
    return f"{p50:8.1f} {p99:8.1f} {len(samples):6d} {result['refused'][name]:7d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run (default: %(default)s)")
    parser.add_argument("--slots", type=int, default=4, help="the gateway's calls in flight (default: %(default)s)")
    parser.add_argument("--flood", type=int, default=64, help="the flood's calls in flight (default: %(default)s)")
    parser.add_argument("--load", metavar="ADDRESS", help=argparse.SUPPRESS)  # the load process itself
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(asyncio.run(load(args.load, args.flood, args.duration))), flush=True)
        return 0
    for name, token in TOKENS.items():
        os.environ[f"{name.upper()}_TOKEN"] = token  # the gateway's config reads them; Children passes them on
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as workdir:
        for label, flood, wait_s in (
            ("steady alone", 0, 30.0),
            ("fair queue", args.flood, 30.0),
            ("no queue (refuse)", args.flood, 0.0),
        ):
            print(f"fairness: {label} ({args.duration:g} s) ...", file=sys.stderr, flush=True)
            rows.append((label, asyncio.run(run(Path(workdir), args, flood, wait_s))))
    print(f"one client floods ({args.flood} in flight), one sends steadily; {args.slots} slots, 50 ms a call")
    print(
        f"{'':<20} {'steady p50':>10} {'p99':>8} {'calls':>6} {'refused':>7} | {'flood p50':>9} {'p99':>8} "
        f"{'calls':>6} {'refused':>7}"
    )
    for label, result in rows:
        print(f"{label:<20} {_summary(result, 'steady'):>34} | {_summary(result, 'flood'):>34}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
