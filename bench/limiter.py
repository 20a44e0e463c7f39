"""python -m bench.limiter [--calls N] [--rounds R] [--redis]: what the per-client policy adds to each call.

Times `ClientPolicy.admit` + `settle` (server/policy/clients.py) with the in-memory store, for a client with
every limit set (requests and tokens per minute, concurrent streams, a day and a month budget, a model
list) and for one with no limits (the model check only), against an empty loop of the same shape (a
coroutine awaited and a function called per call). Nothing else of a call is in the figure: the seam, the
record and the servicer cost the same with or without the policy. The goal (issue 9) is at most 20 µs.

Each round runs N calls back to back on one event loop and is timed in CPU time of this process (so time
spent waiting for a busy machine's CPU is left out); the line shows the median round and the best, per
call. A micro-benchmark, not a test: on a busy machine the figures are still high (cold caches), never low.

With --redis it also starts a redis-server on a free loopback port and times, on the wall clock, the same
client's admit (one round trip running the admission script) and settle (written by the store's own task),
as p50 and p99 of single calls one after another: the goal there is at most 1 ms at the median.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

from server.config import ClientConfig, ClientDefaults, ClientLimits, GatewayConfig
from server.observe.record import CallRecord
from server.policy.clients import ClientPolicy
from server.policy.redis_store import RedisQuotaStore
from server.policy.seam import CallContext
from server.policy.store import QuotaStore
from server.routing.catalog import Catalog, ModelConfig, Price
from server.routing.dispatch import Router
from server.types import ChatMessage, ChatRequest, Role, SamplingParams, Usage

__all__ = ["main"]

MODEL = ModelConfig("gpt-4.1", provider="openai", price=Price(2.0, 8.0))
# Limits far above what a benchmark uses, so that every call is admitted and takes every path.
EVERY_LIMIT = ClientLimits(
    requests_per_minute=10**12,
    tokens_per_minute=10**15,
    concurrent_streams=10**6,
    budget_usd_per_day=10.0**9,
    budget_usd_per_month=10.0**10,
)


def policy_for(limits: ClientLimits, store: QuotaStore | None = None) -> ClientPolicy:
    catalog = Catalog([MODEL, ModelConfig("other", provider="openai")], ["openai"])
    client = ClientConfig("team", models=("gpt-4.1", "openai/*"), limits=limits)
    config = GatewayConfig(models=tuple(catalog.models()), clients=(client,), client_defaults=ClientDefaults(models=()))
    return ClientPolicy.from_config(config, catalog, store)


def a_call() -> tuple[CallContext, ChatRequest]:
    record = CallRecord("StreamGenerate", "team", model="gpt-4.1")
    record.usage, record.cost_usd = Usage(120, 300, 420), 0.00264
    messages = (ChatMessage(Role.SYSTEM, "You are brief." * 4), ChatMessage(Role.USER, "Summarise this. " * 30))
    router = Router(Catalog([MODEL], ["openai"]), {})  # the call's config; the policy never routes
    return CallContext(record, router), ChatRequest("gpt-4.1", messages, SamplingParams(max_tokens=512))


async def _round(calls: int, one: Callable[[], Awaitable[None]]) -> float:
    start = time.process_time_ns()
    for _ in range(calls):
        await one()
    return (time.process_time_ns() - start) / calls / 1000


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    call, request = a_call()
    results: dict[str, list[float]] = {}
    for name, limits in (("every limit", EVERY_LIMIT), ("no limits", ClientLimits())):
        policy = policy_for(limits)

        async def admitted(policy: ClientPolicy = policy) -> None:
            await policy.admit(call, MODEL, request)
            policy.settle(call)

        results[name] = [await _round(calls, admitted) for _ in range(rounds)]

    async def nothing() -> None:
        pass

    def also_nothing(_call: CallContext) -> None:
        pass

    async def empty() -> None:
        await nothing()
        also_nothing(call)

    results["empty loop"] = [await _round(calls, empty) for _ in range(rounds)]
    return results


async def measure_redis(calls: int) -> list[float]:
    """Wall-clock milliseconds of each admit + settle through RedisQuotaStore on a loopback redis-server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await asyncio.create_subprocess_exec(
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        while b"Ready to accept connections" not in await server.stdout.readline():
            pass
        store = RedisQuotaStore(f"redis://127.0.0.1:{port}/0", timeout_s=1.0, when_unavailable="closed")
        policy = policy_for(EVERY_LIMIT, store)
        call, request = a_call()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            await policy.admit(call, MODEL, request)
            policy.settle(call)
            await store.drain()
            times.append((time.perf_counter() - start) * 1000)
        await store.aclose()
        return times
    finally:
        server.kill()
        await server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default: %(default)s)")
    parser.add_argument("--redis", action="store_true", help="also time the Redis store on a loopback redis-server")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.calls, args.rounds))
    baseline = statistics.median(results["empty loop"])
    print(f"per call, median of {args.rounds} rounds of {args.calls:,} (best round); goal: added <= 20 µs")
    for name, rounds in results.items():
        median = statistics.median(rounds)
        added = "" if name == "empty loop" else f"   added {median - baseline:6.2f} µs"
        print(f"  {name:<12} {median:6.2f} µs  ({min(rounds):.2f}){added}")
    if args.redis:
        times = sorted(asyncio.run(measure_redis(min(args.calls, 5_000))))
        p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
        print(
            f"  redis store  p50 {p50:.3f} ms  p99 {p99:.3f} ms"
            f"  (admit + settle, {len(times):,} calls on loopback; goal p50 <= 1 ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
