"""The bench's tables and target lines, and the JSON file behind them.

Every table is made from the run's *summary* (a flat dict of named figures, saved in the JSON), never
from the raw samples directly: the README's table is rendered by the same functions from the saved JSON
(`python -m bench.readme`), so the two cannot drift.

    tables(summary, meta) -> list[Table]      the side-by-side table, the gateway's variants, streaming vs
                                              non-streaming, SSE vs gRPC
    target_lines(summary) -> list[str]        "PASS  CPU per token within 1.5x the floor's: 1.31x" ...
    text(table) / markdown(table)             a table for the terminal or for the README

A missed target is a finding, not a failure: the bench still exits 0.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.results import BenchResult

__all__ = [
    "RESULTS_DIR",
    "SIDES",
    "Table",
    "default_json_path",
    "document",
    "markdown",
    "missed_targets",
    "render",
    "tables",
    "target_lines",
    "text",
    "variant_changes",
    "write_json",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Summary = Mapping[str, float | None]

# The rows of the side-by-side table, and what each is called there.
SIDES = {
    "direct": "direct (aiohttp → upstream, SSE)",
    "floor": "floor (bare grpc.aio, no upstream)",
    "gateway": "gateway, 1 worker",
    "gateway_workers": "gateway, N workers",
    "litellm": "LiteLLM proxy (SSE)",
}
# The gateway's variants, each against the plain gateway: paired rounds (PAIRABLE) or its own rounds (httpx).
VARIANTS = {
    "gateway_metrics": "metrics on (scraped every 1 s)",
    "gateway_tracing": "tracing on (OTLP to a sink)",
    "gateway_asyncio": "plain asyncio loop (uvloop off)",
    "gateway-httpx": "upstream through httpx",
    "gateway_baseline": "the gateway of the --baseline checkout",
}
# What the variants table's change column is.
VARIANT_NOTE = (
    "each round's own difference against the plain gateway. Metrics, tracing, asyncio and baseline ran at "
    "the same time as it, sharing the proxy's CPU (the median of the rounds; the gateway's own CPU µs/token in "
    'those rounds is "beside it"); httpx ran in the gateway\'s own rounds, order swapped every round (the '
    "mean of the two orders' medians)."
)
# The gateway_metrics row of a control run (--metrics-control).
CONTROL = "control: metrics off too (bench noise)"
# Targets (issue 13 and issue 10), each checked against the floor and LiteLLM of the same run.
CPU_VS_FLOOR = 1.5
CPU_VS_LITELLM = 15.0
TTFT_VS_FLOOR_MS = 0.5
P99_VS_FLOOR = 2.0
RSS_5000_MIB = 1024.0
BYTES_VS_SSE = 15.0
METRICS_PERCENT = 5.0

_TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


def _get(summary: Summary, key: str) -> float:
    value = summary.get(key)
    return math.nan if value is None else float(value)


def _fmt(value: float, spec: str, unit: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def _pair(a: float, b: float, spec: str) -> str:
    return "n/a" if math.isnan(a) else f"{a:{spec}} / {_fmt(b, spec)}"


def tables(summary: Summary, meta: Mapping[str, Any]) -> list[Table]:
    """`meta`: the run's settings (a dict), `absent` (side -> why) and `workers`."""
    settings = meta["settings"]
    absent: Mapping[str, str] = meta.get("absent", {})
    c, high = settings["concurrency"], settings["concurrency_high"]
    levels = settings["hold_streams"]
    rows = []
    for side, name in SIDES.items():
        if side == "gateway_workers":
            name = name.replace("N", str(meta.get("workers") or "N"))
        if side in absent:
            rows.append((name, absent[side], *([""] * 6)))
            continue
        rss = " / ".join(_fmt(_get(summary, f"rss_mib_{n}_{side}"), ",.0f") for n in levels)
        rows.append(
            (
                name,
                _fmt(_get(summary, f"ttft_p50_ms_{side}"), ".2f"),
                _pair(_get(summary, f"ttft_ms_50_ms_c{c}_{side}"), _get(summary, f"ttft_ms_99_ms_c{c}_{side}"), ".1f"),
                _pair(
                    _get(summary, f"ttft_ms_50_ms_c{high}_{side}"),
                    _get(summary, f"ttft_ms_99_ms_c{high}_{side}"),
                    ".0f",
                )
                + _failed(_get(summary, f"errors_c{high}_{side}"), 2 * high),
                _fmt(_get(summary, f"tokens_per_s_{side}"), ",.0f"),
                "—" if side == "direct" else _fmt(_get(summary, f"{side}_us_per_token"), ",.0f"),
                "—" if side == "direct" else rss,
                _fmt(_get(summary, f"bytes_per_token_{side}"), ".1f"),
            )
        )
    held = " / ".join(f"{n:,}" for n in levels)
    peers = Table(
        f"side by side: {settings['tokens']}-token streams; RSS with {held} streams open",
        (
            "",
            "TTFT p50 c=1 (ms)",
            f"TTFT p50 / p99 c={c} (ms)",
            f"TTFT p50 / p99 c={high} (ms)",
            f"tokens/s c={c}",
            "CPU µs/token",
            "RSS (MiB)",
            "bytes/token",
        ),
        rows,
    )
    return [peers, _variants(summary), _paced(summary, settings), _sse_vs_grpc(summary, c)]


def _failed(errors: float, streams: int) -> str:
    """A note on the streams that failed (the client's 30 s deadline, on a slow proxy), if any did."""
    if math.isnan(errors) or not errors:
        return ""
    return f" ({errors:,.0f} of {streams:,} failed)"


def _variants(summary: Summary) -> Table:
    names = {**VARIANTS, "gateway_metrics": CONTROL} if _is_control(summary) else VARIANTS
    gateway = (
        _fmt(_get(summary, "tokens_per_s_gateway"), ",.0f"),
        _fmt(_get(summary, "gateway_us_per_token"), ".1f"),
    )
    rows = [
        ("gateway (uvloop when installed)", *gateway, "", "", "", "", _fmt(_get(summary, "ttft_p50_ms_gateway"), ".2f"))
    ]
    if "ttft_p50_ms_gateway-demo" in summary:
        demo = _fmt(_get(summary, "ttft_p50_ms_gateway-demo"), ".2f")
        rows.append(("its offline demo model (no upstream)", "", "", "", "", "", "", demo))
    for side, name in names.items():
        if f"tokens_per_s_{side}" not in summary:
            continue
        paired = f"gateway_beside_{side}_us_per_token" in summary
        beside = (
            (
                _fmt(_get(summary, f"tokens_per_s_gateway_beside_{side}"), ",.0f"),
                _fmt(_get(summary, f"gateway_beside_{side}_us_per_token"), ".1f"),
            )
            if paired
            else ("", "")
        )
        rows.append(
            (
                name,
                _fmt(_get(summary, f"tokens_per_s_{side}"), ",.0f"),
                _fmt(_get(summary, f"{side}_us_per_token"), ".1f"),
                *beside,
                _fmt(_get(summary, f"change_tokens_percent_{side}"), "+.1f", " %"),
                _fmt(_get(summary, f"change_cpu_percent_{side}"), "+.1f", " %"),
                _fmt(_get(summary, f"ttft_p50_ms_{side}"), ".2f"),
            )
        )
    header = (
        "the gateway's variants",
        "tokens/s",
        "CPU µs/token",
        "the gateway beside it: tokens/s",
        "CPU µs/token",
        "change*: tokens/s",
        "CPU",
        "TTFT p50 c=1 (ms)",
    )
    return Table("variants", header, rows)


def _paced(summary: Summary, settings: Mapping[str, Any]) -> Table:
    reply = f"{settings['paced_tokens']} tokens, {settings['paced_ms']} ms apart"
    rows = [
        (
            method,
            _fmt(_get(summary, f"paced_samples_ms_p50_ms_{kind}"), ".1f"),
            _fmt(_get(summary, f"paced_total_ms_p50_ms_{kind}"), ".1f"),
        )
        for method, kind in (("StreamGenerate", "stream"), ("Generate", "unary"))
    ]
    header = (f"streaming vs non-streaming ({reply})", "first token p50 (ms)", "whole reply p50 (ms)")
    return Table("streaming vs non-streaming", header, rows)


def _sse_vs_grpc(summary: Summary, concurrency: int) -> Table:
    rows = []
    for side, name in (
        ("direct", "SSE (OpenAI upstream)"),
        ("litellm", "SSE (LiteLLM)"),
        ("gateway", "gRPC (gateway)"),
        ("floor", "gRPC (floor)"),
    ):
        if f"bytes_per_token_{side}" not in summary:
            continue
        rows.append(
            (
                name,
                _fmt(_get(summary, f"ttft_p50_ms_{side}"), ".2f"),
                _fmt(_get(summary, f"stream_ms_50_ms_c{concurrency}_{side}"), ".1f"),
                _fmt(_get(summary, f"bytes_per_token_{side}"), ".1f"),
                _fmt(_get(summary, f"streams_per_connection_{side}"), ",.1f"),
            )
        )
    header = (
        "SSE vs gRPC",
        "TTFT p50 c=1 (ms)",
        f"stream p50 c={concurrency} (ms)",
        "bytes/token",
        "streams/connection",
    )
    return Table("sse vs grpc", header, rows)


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _targets(summary: Summary) -> list[tuple[str, float, bool | None]]:
    """(what, figure, met); met is None where a side was not measured (the figure is NaN)."""
    g = summary
    cpu_floor = _ratio(_get(g, "gateway_us_per_token"), _get(g, "floor_us_per_token"))
    cpu_litellm = _ratio(_get(g, "litellm_us_per_token"), _get(g, "gateway_us_per_token"))
    ttft = _get(g, "ttft_p50_ms_gateway") - _get(g, "ttft_p50_ms_floor")
    c = int(_get(g, "concurrency"))
    p99 = _ratio(_get(g, f"ttft_ms_99_ms_c{c}_gateway"), _get(g, f"ttft_ms_99_ms_c{c}_floor"))
    rss = _get(g, "rss_mib_5000_gateway")
    wire = _ratio(_get(g, "bytes_per_token_direct"), _get(g, "bytes_per_token_gateway"))
    # A control run's "metrics on" side has metrics off: its change is noise, not what metrics cost.
    control = _is_control(g)
    metrics_cpu, metrics_tokens = (
        _get(g, "change_cpu_percent_gateway_metrics"),
        _get(g, "change_tokens_percent_gateway_metrics"),
    )
    metrics = math.nan if control else max(abs(metrics_cpu), abs(metrics_tokens))
    metrics_figure = (
        "not measured in a control run"
        if control
        else f"{metrics_cpu:+.1f} % CPU per token, {metrics_tokens:+.1f} % tokens/s"
    )
    workers = _ratio(_get(g, "tokens_per_s_gateway_workers"), _get(g, "tokens_per_s_gateway"))

    def met(value: float, ok: bool) -> bool | None:
        return None if math.isnan(value) else ok

    return [
        (
            f"CPU per token within {CPU_VS_FLOOR:g}{_TIMES} the floor's: {cpu_floor:.2f}{_TIMES}",
            cpu_floor,
            met(cpu_floor, cpu_floor <= CPU_VS_FLOOR),
        ),
        (
            f"CPU per token at least {CPU_VS_LITELLM:g}{_TIMES} below LiteLLM's: {cpu_litellm:.1f}{_TIMES}",
            cpu_litellm,
            met(cpu_litellm, cpu_litellm >= CPU_VS_LITELLM),
        ),
        (
            f"TTFT p50 at c=1 within {TTFT_VS_FLOOR_MS:g} ms of the floor's: {ttft:+.2f} ms{_ttft_parts(g)}",
            ttft,
            met(ttft, ttft <= TTFT_VS_FLOOR_MS),
        ),
        (
            f"TTFT p99 at c={c} within {P99_VS_FLOOR:g}{_TIMES} the floor's: {p99:.2f}{_TIMES}",
            p99,
            met(p99, p99 <= P99_VS_FLOOR),
        ),
        (
            f"5,000 concurrent streams under {RSS_5000_MIB:,.0f} MiB RSS: {rss:,.0f} MiB",
            rss,
            met(rss, rss < RSS_5000_MIB),
        ),
        (
            f"at least {BYTES_VS_SSE:g}{_TIMES} fewer bytes per token than OpenAI's SSE: {wire:.1f}{_TIMES}",
            wire,
            met(wire, wire >= BYTES_VS_SSE),
        ),
        (
            f"metrics cost at most {METRICS_PERCENT:g} % CPU per token and tokens/s: {metrics_figure}",
            metrics,
            met(metrics, metrics <= METRICS_PERCENT),
        ),
        (
            f"N workers carry more tokens/s than 1 (this machine: {int(_get(g, 'cpus'))} cores, shared with the load): "
            f"{workers:.2f}{_TIMES}",
            workers,
            met(workers, workers > 1.0),
        ),
    ]


def _is_control(summary: Summary) -> bool:
    """Whether the run was a control run (--metrics-control): its metrics side had metrics off too."""
    return _get(summary, "metrics_control") == 1


def _ttft_parts(g: Summary) -> str:
    """Where the gateway's first token spends its time over the floor's: the gateway's own path (its
    offline demo model, no upstream), then its upstream call (against a direct client's whole call)."""
    demo, gateway = _get(g, "ttft_p50_ms_gateway-demo"), _get(g, "ttft_p50_ms_gateway")
    if math.isnan(demo):
        return ""
    own, upstream, direct = demo - _get(g, "ttft_p50_ms_floor"), gateway - demo, _get(g, "ttft_p50_ms_direct")
    parts = f" (the gateway's own path {own:+.2f} ms, its upstream call {upstream:.2f} ms; direct {direct:.2f} ms"
    cpu = {side: _get(g, f"ttft_cpu_us_per_call_{side}") for side in ("floor", "gateway-demo", "gateway")}
    if not any(math.isnan(us) for us in cpu.values()):
        parts += "; CPU per call: floor {:.0f} µs, demo model {:.0f} µs, upstream model {:.0f} µs".format(*cpu.values())
    return parts + ")"


def target_lines(summary: Summary) -> list[str]:
    verdict = {True: "PASS", False: "FAIL", None: "n/a "}
    return [f"{verdict[ok]}  {what}" for what, _, ok in _targets(summary)]


def missed_targets(summary: Summary) -> list[str]:
    return [what.split(":")[0] for what, _, ok in _targets(summary) if ok is False]


def variant_changes(result: BenchResult) -> dict[str, float]:
    """How much each variant changed the gateway's CPU per token (and tokens/s), in percent of the plain
    gateway's, from each round's own difference. A paired variant ran at the same time as the gateway
    (`result.beside`): the median of its rounds. One that runs in the gateway's own rounds, in swapped
    order every other round (httpx): the mean of the two orders' medians, so that the order's bias cancels."""
    changes: dict[str, float] = {}
    for side in VARIANTS:
        paired = side in result.beside
        plain = result.beside[side] if paired else result.throughput.get("gateway", [])
        pairs = list(zip(plain, result.throughput.get(side, []), strict=False))
        for name, metric in (("cpu", "proxy_us_per_token"), ("tokens", "tokens_per_s")):
            per_round = [_change(getattr(a, metric), getattr(b, metric)) for a, b in pairs]
            orders = [per_round] if paired else [per_round[0::2], per_round[1::2]]
            medians = [statistics.median(r) for r in orders if r]
            changes[f"change_{name}_percent_{side}"] = statistics.fmean(medians) if medians else math.nan
    return changes


def _change(base: float, other: float) -> float:
    return 100 * (other - base) / base if base and not math.isnan(base) else math.nan


def _summary(result: BenchResult) -> dict[str, float]:
    return {
        **result.summary(),
        **variant_changes(result),
        "concurrency": float(result.settings.concurrency),
        "metrics_control": float(result.settings.metrics_control),
        "cpus": float(result.machine.cpus),
    }


def document(result: BenchResult) -> dict[str, Any]:
    """Every raw number of the run (samples included), the summary the tables are made from, and the
    target lines."""
    summary = _summary(result)
    strict: dict[str, Any] = _strict(
        {
            **asdict(result),
            "summary": summary,
            "targets": target_lines(summary),
            "missed_targets": missed_targets(summary),
        }
    )
    return strict


def text(table: Table) -> list[str]:
    rows = [table.header, *table.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def markdown(table: Table) -> list[str]:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cells) + " |"

    aligns = tuple("---" if i == 0 else "---:" for i in range(len(table.header)))
    return [line(table.header), line(aligns), *(line(row) for row in table.rows)]


def render(result: BenchResult) -> str:
    doc = document(result)
    settings, machine = result.settings, result.machine
    lines = [
        f"machine: {machine.cpus} CPUs (nproc), {machine.python}, {machine.platform}",
        f"command: {result.command}",
        f"CPU pinning: {result.pinning}",
        f"TTFT c=1: {settings.ttft_requests} sequential 1-token calls after {settings.ttft_warmup}; throughput: "
        f"{settings.rounds} round(s) of {settings.duration_s:g} s after {settings.warmup_s:g} s warm-up",
    ]
    for table in tables(doc["summary"], doc):
        lines += ["", *text(table)]
    lines += [
        "",
        f"* {VARIANT_NOTE}",
        "CPU: the proxy's whole process group, from /proc, over the window. bytes/token: both directions, "
        "counted on the socket by a relay.",
    ]
    if result.profile_top:
        lines += ["", "py-spy, the gateway under load (top frames):", *result.profile_top[:14]]
    lines += [f"first error ({target}): {error}" for target, error in _first_errors(result).items()]
    lines += ["", "targets:", *doc["targets"]]
    return "\n".join(lines)


def _first_errors(result: BenchResult) -> dict[str, str]:
    errors: dict[str, str] = {}
    for target in sorted({*result.ttft, *result.throughput}):
        ttft = result.ttft.get(target)
        candidates = [ttft.first_error if ttft else ""]
        candidates += [load.first_error for r in result.throughput.get(target, []) for load in r.loads]
        if first := next((e for e in candidates if e), ""):
            errors[target] = first
    return errors


def default_json_path(now: datetime.datetime | None = None) -> Path:
    """bench/results/bench-YYYYMMDD-HHMMSS.json, in UTC: one file per run, ignored by git."""
    now = now or datetime.datetime.now(datetime.UTC)
    return RESULTS_DIR / f"bench-{now:%Y%m%d-%H%M%S}.json"


def write_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document(result), indent=1, allow_nan=False) + "\n")


def _strict(value: Any) -> Any:
    """`value` with every NaN (not measured) as None, so that the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value
