"""What a bench run is asked to do (`Settings`), what it measured (the result types) and the targets.

Every default number of the bench lives here. Results keep their raw samples, so `--json` can save them
and a later analysis can compute any statistic, not only the ones in the table.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GATEWAYS",
    "PAIRABLE",
    "QUICK",
    "SCENARIOS",
    "TARGETS",
    "BenchResult",
    "HoldResult",
    "LoadResult",
    "Machine",
    "Settings",
    "ThroughputResult",
    "TtftResult",
    "WireResult",
    "percentile",
    "result_from_json",
]

# The sides (bench/stack.py): the upstream itself (direct), the floor (a bare grpc.aio server), the gateway
# with 1 worker, its variants (metrics on, tracing on, the plain asyncio loop and with --baseline the gateway
# of another checkout, each in paired rounds beside it; the httpx transport and its offline demo model, in
# its own rounds), the gateway with N workers, and the LiteLLM proxy. All but direct are proxy process groups.
# The kinds of step a run takes, in order (bench/scenarios.py); `--only` picks some.
SCENARIOS = ("ttft", "throughput", "high", "wire", "paced", "profile", "hold")
GATEWAYS = (
    "gateway",
    "gateway_metrics",
    "gateway_tracing",
    "gateway_asyncio",
    "gateway-httpx",
    "gateway-demo",
    "gateway_baseline",
    "gateway_workers",
)
TARGETS = ("direct", "floor", *GATEWAYS, "litellm")
# The variants that are gateway processes of their own on the proxy's CPU. Each runs its throughput rounds
# at the same time as the plain gateway (paired rounds): windows run one after the other differ by ±20 % on
# this machine, windows run together by about 1 %. (The httpx and demo sides are the plain gateway's own
# process, so they run in its rounds.)
PAIRABLE = ("gateway_metrics", "gateway_tracing", "gateway_asyncio", "gateway_baseline")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One bench run. The defaults make `make bench` take 10-25 minutes on the 2-core machine, by its load."""

    ttft_requests: int = 200  # measured sequential requests per side
    ttft_warmup: int = 20  # requests before those, not measured
    duration_s: float = 5.0  # throughput measurement window per side and round
    warmup_s: float = 1.5  # load before the window, not measured
    concurrency: int = 32  # concurrent streams per side, summed over the load processes
    concurrency_high: int = 256  # the second latency level: one round per proxy
    processes: int = 2  # load-generator processes per side (a client costs CPU too)
    tokens: int = 64  # tokens per stream in the throughput scenario
    rounds: int = 2  # throughput rounds (direct, gateway, direct, …); the table shows medians
    hold_streams: tuple[int, ...] = (1000, 5000)  # concurrent open streams whose RSS is read
    wire_streams: int = 100  # streams counted on the wire, at `concurrency`
    paced_requests: int = 20  # Generate vs StreamGenerate: sequential calls each
    paced_tokens: int = 32  # ... of a reply of this many tokens
    paced_ms: int = 5  # ... that the upstream sends this many ms apart
    profile_s: float = 5.0  # py-spy on the gateway under load (0: no profile)
    workers: int = 0  # the N of "N workers" (0: the number of CPUs)
    litellm: bool = True  # include LiteLLM when `make bench-peers` installed it
    only: tuple[str, ...] = ()  # run only these kinds of step (SCENARIOS); () = all
    # A checkout (e.g. of main) whose gateway runs as a variant in paired rounds: a change measured
    # against what it changes on one noisy machine, not against a run of another hour. "" = none.
    baseline: str = ""
    # Give the gateway a CPU of its own (with 2+ CPUs): it is one Python thread, and on a small machine the
    # load processes would otherwise take turns with it on its core, so it would measure the scheduler.
    pin: bool = True
    # The control run: the second gateway gets metrics off too, so "metrics on vs off" shows the bench's own
    # noise between two identical gateways.
    metrics_control: bool = False
    # Run only these sides (of TARGETS; the plain gateway always runs): more rounds of a few sides in the
    # time of a full run. () = every side.
    sides: tuple[str, ...] = ()

    def per_process_concurrency(self) -> list[int]:
        """The concurrency of each load process: as even a split as the numbers allow."""
        base, extra = divmod(self.concurrency, self.processes)
        return [base + (1 if i < extra else 0) for i in range(self.processes) if base or i < extra]


# `--quick`: a smoke check of the whole pipeline in about 10 s; its numbers are indicative only.
QUICK = Settings(
    ttft_requests=30,
    ttft_warmup=5,
    duration_s=1.0,
    warmup_s=0.3,
    concurrency_high=64,
    rounds=1,
    hold_streams=(100,),
    wire_streams=10,
    paced_requests=3,
    paced_tokens=4,
    profile_s=1.0,
)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between ranks (numpy's default); NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Machine:
    cpus: int
    python: str
    platform: str

    @classmethod
    def this(cls) -> Machine:
        return cls(
            cpus=os.cpu_count() or 0,
            python=f"{platform.python_implementation()} {platform.python_version()}",
            platform=platform.platform(terse=True),
        )


@dataclass(frozen=True, slots=True)
class TtftResult:
    """Sequential requests at concurrency 1: milliseconds from sending a request to its first content delta."""

    target: str
    samples_ms: list[float]
    errors: int = 0
    first_error: str = ""
    total_ms: list[float] = field(default_factory=list)  # to the end of each measured stream
    # The proxy's process-group CPU over all the calls (warm-up included), per call; NaN for direct.
    proxy_cpu_us_per_call: float = math.nan

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples_ms, 99)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load process measured during the throughput window."""

    concurrency: int
    elapsed_s: float
    tokens: int
    streams: int
    errors: int
    cpu_percent: float  # the load process's own CPU time over the window
    stream_ms: list[float]  # duration of every stream that finished inside the window
    first_error: str = ""
    ttft_ms: list[float] = field(default_factory=list)  # time to first token of each of those streams


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    """One side of one throughput round: all its load processes, and the CPU of the servers it drove."""

    target: str
    loads: list[LoadResult]
    # "upstream", "proxy" (the process group the load went through, if any) and "machine" (all CPUs).
    cpu_percent: dict[str, float]

    @property
    def tokens_per_s(self) -> float:
        return sum(load.tokens / load.elapsed_s for load in self.loads if load.elapsed_s)

    @property
    def streams_per_s(self) -> float:
        return sum(load.streams / load.elapsed_s for load in self.loads if load.elapsed_s)

    @property
    def errors(self) -> int:
        return sum(load.errors for load in self.loads)

    @property
    def load_cpu_percent(self) -> float:
        return sum(load.cpu_percent for load in self.loads)

    @property
    def other_cpu_percent(self) -> float:
        """CPU the machine spent on anything but this side's upstream, gateway and load: noise, when large."""
        ours = sum(v for k, v in self.cpu_percent.items() if k != "machine") + self.load_cpu_percent
        return max(0.0, self.cpu_percent.get("machine", math.nan) - ours)

    @property
    def proxy_cpu_percent(self) -> float:
        return self.cpu_percent.get("proxy", math.nan)

    @property
    def proxy_us_per_token(self) -> float:
        """The proxy's CPU time per token, in µs: its cost, whatever share of the machine it got."""
        cpu = self.cpu_percent.get("proxy", math.nan)
        return cpu / 100 / self.tokens_per_s * 1e6 if self.tokens_per_s else math.nan

    def stream_ms(self, q: float) -> float:
        return percentile([ms for load in self.loads for ms in load.stream_ms], q)

    def ttft_ms(self, q: float) -> float:
        return percentile([ms for load in self.loads for ms in load.ttft_ms], q)


@dataclass(frozen=True, slots=True)
class HoldResult:
    """Concurrent open streams through one proxy: how many opened, how fast, and the proxy's RSS then."""

    target: str
    streams: int
    opened: int
    open_s: float
    rss_bytes: int  # the proxy's process group, all streams open
    idle_rss_bytes: int  # the same before the first was opened
    first_error: str = ""


@dataclass(frozen=True, slots=True)
class WireResult:
    """A fixed number of streams through a counting TCP relay: the bytes both ways and the connections."""

    target: str
    protocol: str  # "sse" or "grpc"
    streams: int
    tokens: int
    bytes_up: int  # client to server
    bytes_down: int
    connections: int
    errors: int = 0

    @property
    def bytes_per_token(self) -> float:
        return (self.bytes_up + self.bytes_down) / self.tokens if self.tokens else math.nan

    @property
    def streams_per_connection(self) -> float:
        return self.streams / self.connections if self.connections else math.nan


@dataclass(slots=True)
class BenchResult:
    settings: Settings
    machine: Machine
    command: str
    pinning: str = ""  # which CPUs each process was kept to, as the table's header says
    ttft: dict[str, TtftResult] = field(default_factory=dict)
    throughput: dict[str, list[ThroughputResult]] = field(default_factory=dict)  # one per round
    # Per PAIRABLE variant, the plain gateway's rounds that ran at the same time as the variant's (which are
    # in `throughput`), round for round.
    beside: dict[str, list[ThroughputResult]] = field(default_factory=dict)
    gateway_peak_rss_bytes: int = 0
    throughput_high: dict[str, ThroughputResult] = field(default_factory=dict)  # at concurrency_high
    hold: dict[str, list[HoldResult]] = field(default_factory=dict)  # one per hold_streams level
    wire: dict[str, WireResult] = field(default_factory=dict)
    paced: dict[str, TtftResult] = field(default_factory=dict)  # "stream" and "unary" through the gateway
    absent: dict[str, str] = field(default_factory=dict)  # a side not measured, and why
    workers: int = 0  # the N of the gateway_workers side
    profile_top: list[str] = field(default_factory=list)  # py-spy's top frames of the gateway under load
    finished: str = ""  # when the run ended, UTC

    def median(self, target: str, metric: str) -> float:
        """The median over rounds of a ThroughputResult property, e.g. median("gateway", "tokens_per_s"); a
        round that measured nothing (NaN: no token in its window) does not count."""
        return _median_of(self.throughput.get(target, []), metric)

    def median_round(self, target: str) -> ThroughputResult | None:
        """The round of `target` with the median tokens/s (the lower one of the middle two), for per-round detail."""
        rounds = sorted(self.throughput.get(target, []), key=lambda r: r.tokens_per_s)
        return rounds[(len(rounds) - 1) // 2] if rounds else None

    def summary(self) -> dict[str, float]:
        """The headline numbers, as the table shows them."""
        ttft = {
            f"ttft_{stat}_ms_{target}": getattr(result, f"{stat}_ms")
            for target, result in self.ttft.items()
            for stat in ("p50", "p99")
        }
        ttft |= {f"ttft_cpu_us_per_call_{target}": result.proxy_cpu_us_per_call for target, result in self.ttft.items()}
        throughput = {
            f"{metric}_{target}": self.median(target, metric)
            for target in self.throughput
            for metric in ("tokens_per_s", "streams_per_s")
        }
        proxies: dict[str, float] = {}
        for target in self.throughput:
            if target == "direct":
                continue
            proxies[f"{target}_cpu_percent"] = self.median(target, "proxy_cpu_percent")
            proxies[f"{target}_us_per_token"] = self.median(target, "proxy_us_per_token")
        for variant, rounds in self.beside.items():
            throughput[f"tokens_per_s_gateway_beside_{variant}"] = _median_of(rounds, "tokens_per_s")
            proxies[f"gateway_beside_{variant}_us_per_token"] = _median_of(rounds, "proxy_us_per_token")
        loaded = {
            f"{stat}_{q}_ms_c{concurrency}_{target}": getattr(result, stat)(q)
            for concurrency, results in (
                (self.settings.concurrency, {t: self.median_round(t) for t in self.throughput}),
                (self.settings.concurrency_high, self.throughput_high),
            )
            for target, result in results.items()
            if result is not None
            for stat in ("ttft_ms", "stream_ms")
            for q in (50, 99)
        }
        failed = {
            f"errors_c{self.settings.concurrency_high}_{t}": float(r.errors) for t, r in self.throughput_high.items()
        }
        held = {
            f"rss_mib_{h.streams}_{target}": h.rss_bytes / 2**20 if h.opened == h.streams else math.nan
            for target, levels in self.hold.items()
            for h in levels
        }
        wire = {
            f"{name}_{target}": float(getattr(w, name))
            for target, w in self.wire.items()
            for name in ("bytes_per_token", "streams_per_connection")
        }
        paced = {
            f"paced_{stat}_p50_ms_{kind}": percentile(getattr(result, stat), 50)
            for kind, result in self.paced.items()
            for stat in ("samples_ms", "total_ms")
        }
        noise = [r.other_cpu_percent for rounds in (*self.throughput.values(), *self.beside.values()) for r in rounds]
        other = {"other_cpu_percent": statistics.fmean(noise) if noise else math.nan}
        return {**ttft, **throughput, **proxies, **loaded, **failed, **held, **wire, **paced, **other}


def _median_of(rounds: list[ThroughputResult], metric: str) -> float:
    values = [float(getattr(r, metric)) for r in rounds]
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _floats(raw: dict[str, Any], *names: str) -> dict[str, Any]:
    """`raw` with None (NaN, as JSON saved it) back to NaN in the float fields `names`."""
    return {k: (math.nan if v is None and k in names else v) for k, v in raw.items()}


def result_from_json(doc: dict[str, Any]) -> BenchResult:
    """The BenchResult a saved run (`report.document`) was made from: its raw numbers, for a new summary."""
    raw = doc["settings"]
    tuples = {
        "hold_streams": tuple(raw["hold_streams"]),
        "only": tuple(raw.get("only", ())),
        "sides": tuple(raw.get("sides", ())),
    }
    known = {f.name for f in dataclasses.fields(Settings)}  # a run saved before a setting went (`paired`)
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k in known} | tuples
    settings = Settings(**fields)

    throughput, beside = dict(doc["throughput"]), dict(doc.get("beside", {}))
    if raw.get("paired"):  # saved by `--paired` (until 2026-12-02): its gateway rounds ran beside the one variant
        variant = next(side for side in PAIRABLE if side in throughput)
        beside[variant] = throughput.pop("gateway")

    def ttft(raw: dict[str, Any]) -> TtftResult:
        return TtftResult(**_floats(raw, "proxy_cpu_us_per_call"))

    def rounds(raw: dict[str, Any]) -> ThroughputResult:
        loads = [LoadResult(**_floats(load, "elapsed_s", "cpu_percent")) for load in raw["loads"]]
        cpu = {k: math.nan if v is None else v for k, v in raw["cpu_percent"].items()}
        return ThroughputResult(raw["target"], loads, cpu)

    return BenchResult(
        settings=settings,
        machine=Machine(**doc["machine"]),
        command=doc["command"],
        pinning=doc["pinning"],
        ttft={k: ttft(v) for k, v in doc["ttft"].items()},
        throughput={k: [rounds(r) for r in v] for k, v in throughput.items()},
        beside={k: [rounds(r) for r in v] for k, v in beside.items()},
        gateway_peak_rss_bytes=doc["gateway_peak_rss_bytes"],
        throughput_high={k: rounds(v) for k, v in doc["throughput_high"].items()},
        hold={k: [HoldResult(**h) for h in v] for k, v in doc["hold"].items()},
        wire={k: WireResult(**w) for k, w in doc["wire"].items()},
        paced={k: ttft(v) for k, v in doc["paced"].items()},
        absent=doc["absent"],
        workers=doc["workers"],
        profile_top=doc["profile_top"],
        finished=doc["finished"],
    )
