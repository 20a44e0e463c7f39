"""What a bench run is asked to do (`Settings`), what it measured (the result types) and the targets.

Every default number of the bench lives here. Results keep their raw samples, so `--json` can save them
and a later analysis can compute any statistic, not only the ones in the table.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "GATEWAYS",
    "QUICK",
    "TARGETS",
    "TARGET_ADDED_TTFT_P50_MS",
    "TARGET_GATEWAY_TOKENS_PER_S",
    "TARGET_METRICS_OVERHEAD_PERCENT",
    "BenchResult",
    "LoadResult",
    "Machine",
    "Settings",
    "ThroughputResult",
    "TtftResult",
    "percentile",
]

# The gateway's goals: at most 2 ms of added time to first token at p50, and at least 10,000 tokens/s
# through one gateway process.
TARGET_ADDED_TTFT_P50_MS = 2.0
TARGET_GATEWAY_TOKENS_PER_S = 10_000.0
# Metrics must not cost the per-token path: tokens/s and CPU per token with metrics on stay this close to off.
TARGET_METRICS_OVERHEAD_PERCENT = 5.0

# What the load goes to: the upstream itself, the gateway, the same gateway process through its httpx
# transport, and the same gateway config with metrics on (a second gateway process, scraped once a second
# as a busy Prometheus would). GATEWAYS are the gateway processes, whose CPU each side of theirs measures.
GATEWAYS = ("gateway", "gateway_metrics")
TARGETS = ("direct", "gateway", "gateway-httpx", "gateway_metrics")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One bench run. The defaults make `make bench` take about 140 s."""

    ttft_requests: int = 300  # measured sequential requests per side
    ttft_warmup: int = 30  # requests before those, not measured
    duration_s: float = 8.0  # throughput measurement window per side and round
    warmup_s: float = 2.0  # load before the window, not measured
    concurrency: int = 32  # concurrent streams per side, summed over the load processes
    processes: int = 2  # load-generator processes per side (a client costs CPU too)
    tokens: int = 64  # tokens per stream in the throughput scenario
    rounds: int = 3  # throughput rounds (direct, gateway, direct, …); the table shows medians
    # Give the gateway a CPU of its own (with 2+ CPUs): it is one Python thread, and on a small machine the
    # load processes would otherwise take turns with it on its core, so it would measure the scheduler.
    pin: bool = True
    # The control run: the second gateway gets metrics off too, so "metrics on vs off" shows the bench's own
    # noise between two identical gateways.
    metrics_control: bool = False

    def per_process_concurrency(self) -> list[int]:
        """The concurrency of each load process: as even a split as the numbers allow."""
        base, extra = divmod(self.concurrency, self.processes)
        return [base + (1 if i < extra else 0) for i in range(self.processes) if base or i < extra]


# `--quick`: a smoke check of the whole pipeline in about 10 s; its numbers are indicative only.
QUICK = Settings(ttft_requests=50, ttft_warmup=10, duration_s=2.0, warmup_s=0.5, rounds=1)


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

    target: str  # "direct" or "gateway"
    samples_ms: list[float]
    errors: int = 0
    first_error: str = ""

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


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    """One side of one throughput round: all its load processes, and the CPU of the servers it drove."""

    target: str
    loads: list[LoadResult]
    # "upstream", "gateway" (when the load went through it) and "machine" (all CPUs, everything running).
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
    def gateway_us_per_token(self) -> float:
        """The gateway's CPU time per token, in µs: its cost, whatever share of the machine it got."""
        cpu = self.cpu_percent.get("gateway", math.nan)
        return cpu / 100 / self.tokens_per_s * 1e6 if self.tokens_per_s else math.nan

    def stream_ms(self, q: float) -> float:
        return percentile([ms for load in self.loads for ms in load.stream_ms], q)


@dataclass(slots=True)
class BenchResult:
    settings: Settings
    machine: Machine
    command: str
    pinning: str = ""  # which CPUs each process was kept to, as the table's header says
    ttft: dict[str, TtftResult] = field(default_factory=dict)
    throughput: dict[str, list[ThroughputResult]] = field(default_factory=dict)  # one per round
    gateway_peak_rss_bytes: int = 0

    def median(self, target: str, metric: str) -> float:
        """The median over rounds of a ThroughputResult property, e.g. median("gateway", "tokens_per_s")."""
        values = [float(getattr(r, metric)) for r in self.throughput.get(target, [])]
        return statistics.median(values) if values else math.nan

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
        throughput = {
            f"{metric}_{target}": self.median(target, metric)
            for target in self.throughput
            for metric in ("tokens_per_s", "streams_per_s")
        }
        gateways: dict[str, float] = {}
        for target in GATEWAYS:
            cpu = [r.cpu_percent.get("gateway", math.nan) for r in self.throughput.get(target, [])]
            gateways[f"{target}_cpu_percent"] = statistics.median(cpu) if cpu else math.nan
            gateways[f"{target}_us_per_token"] = self.median(target, "gateway_us_per_token")
        return {
            **ttft,
            **throughput,
            **gateways,
            "gateway_httpx_us_per_token": self.median("gateway-httpx", "gateway_us_per_token"),
            "gateway_peak_rss_mib": self.gateway_peak_rss_bytes / 2**20,
        }
