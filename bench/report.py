"""The bench's one side-by-side table, and the JSON file of raw numbers behind it.

    scenario                           direct     gateway     added / ratio  target
    TTFT p50 (c=1)                     1.05 ms    1.90 ms     +0.85 ms       ≤ +2 ms  ok
    tokens/s (c=32, 64-token streams)  30,000     11,000      0.37 times     ≥ 10,000  ok

    metrics (the gateway, same load)   off        on          difference     target
    tokens/s                           11,000     10,900      -0.9 %         within 5 %  ok
    gateway CPU per token              90 µs      92 µs       +2.2 %         within 5 %  ok

A missed target is marked MISSED; the bench still exits 0, since a missed target is a finding, not a failure.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path

from bench.results import (
    TARGET_ADDED_TTFT_P50_MS,
    TARGET_GATEWAY_TOKENS_PER_S,
    TARGET_METRICS_OVERHEAD_PERCENT,
    TARGETS,
    BenchResult,
)

__all__ = ["RESULTS_DIR", "default_json_path", "metrics_changes", "missed_targets", "render", "write_json"]

# Where `--json` without a file name writes: inside the repository, but ignored by git (.gitignore).
RESULTS_DIR = Path(__file__).resolve().parent / "results"

_DASH = "—"
_TIMES = "\N{MULTIPLICATION SIGN}"
# Other processes using more than this much CPU during a throughput window make its numbers suspect.
_NOISY_CPU_PERCENT = 20.0


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f} ms"


def _count(value: float, decimals: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{decimals}f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}%"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def missed_targets(result: BenchResult) -> list[str]:
    """The names of the targets this run missed (empty when every target was met)."""
    summary = result.summary()
    added_p50 = summary["ttft_p50_ms_gateway"] - summary["ttft_p50_ms_direct"]
    missed = []
    if not added_p50 <= TARGET_ADDED_TTFT_P50_MS:  # NaN (not measured) counts as missed
        missed.append("added TTFT p50")
    if not summary["tokens_per_s_gateway"] >= TARGET_GATEWAY_TOKENS_PER_S:
        missed.append("gateway tokens/s")
    if not all(abs(change) <= TARGET_METRICS_OVERHEAD_PERCENT for change in metrics_changes(result).values()):
        missed.append("metrics overhead")
    return missed


def metrics_changes(result: BenchResult) -> dict[str, float]:
    """How much turning metrics on changed the gateway's tokens/s and CPU per token, in percent of off.

    The two gateways run back to back in every round, in swapped order every other round (whichever runs
    second does worse on a busy machine). Each round's own difference is taken; the medians of the rounds
    of each order are averaged, so that the order's bias cancels."""
    pairs = list(zip(result.throughput.get("gateway", []), result.throughput.get("gateway_metrics", []), strict=False))
    changes: dict[str, float] = {}
    for name, metric in (("tokens/s", "tokens_per_s"), ("gateway CPU per token", "gateway_us_per_token")):
        per_round = [_change(getattr(off, metric), getattr(on, metric)) for off, on in pairs]
        by_order = [per_round[0::2], per_round[1::2]]
        medians = [statistics.median(rounds) for rounds in by_order if rounds]
        changes[name] = statistics.fmean(medians) if medians else math.nan
    return changes


def _change(off: float, on: float) -> float:
    return 100 * (on - off) / off if off else math.nan


Row = tuple[str, str, str, str, str]  # scenario, direct, gateway, added / ratio, target


def _rows(result: BenchResult) -> list[Row]:
    header: Row = ("scenario", "direct", "gateway", "added / ratio", "target")
    return [
        header,
        *_ttft_rows(result),
        *_throughput_rows(result),
        *_detail_rows(result),
        *_gateway_rows(result),
        *_httpx_rows(result),
    ]


def _ttft_rows(result: BenchResult) -> list[Row]:
    s = result.summary()
    ok = "added TTFT p50" not in missed_targets(result)
    rows: list[Row] = []
    for stat in ("p50", "p99"):
        direct, gateway = s[f"ttft_{stat}_ms_direct"], s[f"ttft_{stat}_ms_gateway"]
        target = f"≤ +{TARGET_ADDED_TTFT_P50_MS:g} ms  {_verdict(ok)}" if stat == "p50" else ""
        rows.append((f"TTFT {stat} (c=1)", _ms(direct), _ms(gateway), f"{gateway - direct:+.2f} ms", target))
    return rows


def _throughput_rows(result: BenchResult) -> list[Row]:
    s = result.summary()
    ok = "gateway tokens/s" not in missed_targets(result)
    settings = result.settings
    ratio = {m: s[f"{m}_gateway"] / s[f"{m}_direct"] for m in ("tokens_per_s", "streams_per_s")}
    return [
        (
            f"tokens/s (c={settings.concurrency}, {settings.tokens}-token streams)",
            _count(s["tokens_per_s_direct"]),
            _count(s["tokens_per_s_gateway"]),
            f"{ratio['tokens_per_s']:.2f}{_TIMES}",
            f"≥ {TARGET_GATEWAY_TOKENS_PER_S:,.0f}  {_verdict(ok)}",
        ),
        (
            "streams/s",
            _count(s["streams_per_s_direct"], 1),
            _count(s["streams_per_s_gateway"], 1),
            f"{ratio['streams_per_s']:.2f}{_TIMES}",
            "",
        ),
    ]


def _detail_rows(result: BenchResult) -> list[Row]:
    """Stream times and CPU of the median round of each side, and the noise of every round."""
    direct, gateway = result.median_round("direct"), result.median_round("gateway")
    if direct is None or gateway is None:
        return []
    other = {target: max(r.other_cpu_percent for r in result.throughput[target]) for target in ("direct", "gateway")}
    noisy = max(other.values()) > _NOISY_CPU_PERCENT
    return [
        (
            f"stream time p50 / p99 (c={result.settings.concurrency})",
            f"{direct.stream_ms(50):.1f} / {direct.stream_ms(99):.1f} ms",
            f"{gateway.stream_ms(50):.1f} / {gateway.stream_ms(99):.1f} ms",
            f"{gateway.stream_ms(50) / direct.stream_ms(50):.2f}{_TIMES}",
            "",
        ),
        (
            "CPU upstream / load clients",
            f"{_pct(direct.cpu_percent['upstream'])} / {_pct(direct.load_cpu_percent)}",
            f"{_pct(gateway.cpu_percent['upstream'])} / {_pct(gateway.load_cpu_percent)}",
            "",
            "",
        ),
        (
            "CPU of other processes (max)",
            _pct(other["direct"]),
            _pct(other["gateway"]),
            "",
            "NOISY: the machine was busy" if noisy else "",
        ),
    ]


def _gateway_rows(result: BenchResult) -> list[Row]:
    s = result.summary()
    rss_mib = result.gateway_peak_rss_bytes / 2**20
    us_per_token = s["gateway_us_per_token"]
    per_core = "" if math.isnan(us_per_token) else f"{1e6 / us_per_token:,.0f} tokens/s/core"
    rows: list[Row] = [
        ("gateway CPU / peak RSS", _DASH, f"{_pct(s['gateway_cpu_percent'])} / {rss_mib:.0f} MiB", "", ""),
        ("gateway CPU per token", _DASH, "n/a" if math.isnan(us_per_token) else f"{us_per_token:.0f} µs", per_core, ""),
    ]
    errors = {
        target: sum(r.errors for r in result.throughput.get(target, []))
        + (result.ttft[target].errors if target in result.ttft else 0)
        for target in ("direct", "gateway")
    }
    if any(errors.values()):
        rows.append(("ERRORS (failed streams)", str(errors["direct"]), str(errors["gateway"]), "", "FAILED STREAMS"))
    return rows


def _httpx_rows(result: BenchResult) -> list[Row]:
    """The same gateway calling the same upstream through httpx (`transport: httpx`), against aiohttp."""
    if "gateway-httpx" not in result.throughput:
        return []
    s = result.summary()
    tokens, us_per_token = s["tokens_per_s_gateway-httpx"], s["gateway_httpx_us_per_token"]
    errors = sum(r.errors for r in result.throughput["gateway-httpx"])
    failed: list[Row] = [("gateway via httpx: ERRORS", _DASH, str(errors), "", "FAILED STREAMS")] if errors else []
    return [
        (
            "gateway via httpx: tokens/s",
            _DASH,
            _count(tokens),
            f"{tokens / s['tokens_per_s_gateway']:.2f}{_TIMES} aiohttp's",
            "",
        ),
        (
            "gateway via httpx: CPU per token",
            _DASH,
            "n/a" if math.isnan(us_per_token) else f"{us_per_token:.0f} µs",
            f"{us_per_token / s['gateway_us_per_token']:.2f}{_TIMES} aiohttp's",
            "",
        ),
        *failed,
    ]


def _metrics_rows(result: BenchResult) -> list[Row]:
    """The gateway with metrics off and on, under the same load in the same run."""
    if "gateway_metrics" not in result.throughput or "gateway_metrics" not in result.ttft:
        return []
    s = result.summary()
    control = result.settings.metrics_control
    changes = metrics_changes(result)
    ok = "metrics overhead" not in missed_targets(result)
    target = f"within {TARGET_METRICS_OVERHEAD_PERCENT:g} %  {_verdict(ok)}"
    ttft_off, ttft_on = s["ttft_p50_ms_gateway"], s["ttft_p50_ms_gateway_metrics"]
    us_off, us_on = s["gateway_us_per_token"], s["gateway_metrics_us_per_token"]
    return [
        ("metrics (the gateway, same load)", "off", "off (control)" if control else "on", "difference*", "target"),
        (
            "tokens/s",
            _count(s["tokens_per_s_gateway"]),
            _count(s["tokens_per_s_gateway_metrics"]),
            f"{changes['tokens/s']:+.1f} %",
            target,
        ),
        (
            "gateway CPU per token",
            f"{us_off:.1f} µs",
            f"{us_on:.1f} µs",
            f"{changes['gateway CPU per token']:+.1f} %",
            target,
        ),
        ("TTFT p50 (c=1)", _ms(ttft_off), _ms(ttft_on), f"{ttft_on - ttft_off:+.2f} ms", ""),
    ]


def _table(rows: list[Row]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]).rstrip()
        for row in rows
    ]


def render(result: BenchResult) -> str:
    settings, machine = result.settings, result.machine
    split = " + ".join(str(n) for n in settings.per_process_concurrency())
    lines = [
        f"machine: {machine.cpus} CPUs (nproc), {machine.python}, {machine.platform}",
        f"command: {result.command}",
        f"CPU pinning: {result.pinning}",
        f"TTFT: {settings.ttft_requests} sequential requests per side after {settings.ttft_warmup} warm-up, "
        "1-token streams",
        f"throughput: {split} concurrent streams in {len(settings.per_process_concurrency())} load processes per "
        f"side, {settings.duration_s:g} s window after {settings.warmup_s:g} s warm-up, "
        + (f"{settings.rounds} rounds (medians)" if settings.rounds > 1 else "1 round"),
        "",
    ]
    lines += _table(_rows(result))
    if metrics_rows := _metrics_rows(result):
        lines += ["", *_table(metrics_rows)]
        lines += [
            "* per round (off and on back to back, order swapped every round); the mean of the two orders' medians"
        ]
    lines += ["", "CPU: 100% = one core, over the throughput window. Direct: httpx + SSE; gateway: grpc.aio."]
    lines += [f"first error ({target}): {error}" for target, error in _first_errors(result).items()]
    missed = missed_targets(result)
    lines.append(f"targets: {'MISSED: ' + ', '.join(missed) if missed else 'all met'}")
    return "\n".join(lines)


def _first_errors(result: BenchResult) -> dict[str, str]:
    errors: dict[str, str] = {}
    for target in TARGETS:
        ttft = result.ttft.get(target)
        candidates = [ttft.first_error if ttft else ""]
        candidates += [load.first_error for r in result.throughput.get(target, []) for load in r.loads]
        if first := next((e for e in candidates if e), ""):
            errors[target] = first
    return errors


def default_json_path(now: datetime.datetime | None = None) -> Path:
    """bench/results/bench-YYYYMMDD-HHMMSS.json, in UTC: one file per run, none in the repository root."""
    now = now or datetime.datetime.now(datetime.UTC)
    return RESULTS_DIR / f"bench-{now:%Y%m%d-%H%M%S}.json"


def write_json(result: BenchResult, path: Path) -> None:
    """Every raw number of the run (samples included), the headline summary and the missed targets."""
    document = {
        **asdict(result),
        "summary": result.summary(),
        "metrics_changes_percent": metrics_changes(result),
        "missed_targets": missed_targets(result),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_strict(document), indent=2, allow_nan=False) + "\n")


def _strict(value: object) -> object:
    """`value` with every NaN (not measured) as None, so that the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value
