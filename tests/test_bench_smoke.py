"""`make bench` works end to end with tiny numbers: every kind of process, every scenario, every table and
target line, every figure of every side that ran measured, and nothing saved or left running.

Targets are not asserted here (figures belong to `make bench`, not to timed tests). LiteLLM is left out
(it takes most of a minute to import, and `make bench-peers` may not have installed it); its side is the
same SSE load as the direct one, which runs here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import RESULTS_DIR
from bench.stack import server_flags

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--quick",
    "--no-litellm",
    *("--ttft-requests", "5", "--ttft-warmup", "1", "--duration", "0.5", "--warmup", "0.1"),
    *("--concurrency", "4", "--concurrency-high", "8", "--processes", "1", "--tokens", "8"),
    *("--hold-streams", "20", "--wire-streams", "4", "--paced-requests", "2", "--profile", "1"),
]


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m module args` from the repository, which must exit 0 (its stderr's tail says why not)."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_a_tiny_bench_runs_every_scenario_and_measures_every_figure(tmp_path: Path) -> None:
    saved_before = sorted(RESULTS_DIR.iterdir()) if RESULTS_DIR.exists() else []
    out = tmp_path / "bench.json"
    run = run_module("bench", *TINY, "--json", str(out), timeout=600)
    document = json.loads(out.read_text())
    absent = document["absent"]
    assert absent["litellm"] == "left out (--no-litellm)"
    if "--workers" not in server_flags():
        assert absent["gateway_workers"] == "n/a (no --workers)"
    measured = {"direct", "floor", "gateway", "gateway_metrics", "gateway_tracing", "gateway_asyncio"}
    measured |= {"gateway_workers"} - set(absent)
    summary = document["summary"]
    for side in measured:
        assert summary[f"ttft_p50_ms_{side}"] > 0, side
        assert summary[f"tokens_per_s_{side}"] > 0, side
        assert summary[f"ttft_ms_50_ms_c4_{side}"] > 0, side
        if side != "direct":
            assert summary[f"{side}_us_per_token"] > 0, side
    # The first token split: the same gateway answering from its demo model, and each proxy's CPU per call.
    assert summary["ttft_p50_ms_gateway-demo"] > 0
    for side in ("floor", "gateway", "gateway-demo"):
        # Read from /proc in clock ticks (10 ms): six tiny calls may cost less than one, so 0 is a reading.
        assert summary[f"ttft_cpu_us_per_call_{side}"] >= 0, side
    assert summary["ttft_cpu_us_per_call_direct"] is None  # no proxy: null in the JSON
    assert "the gateway's own path" in run.stdout
    for side in ("direct", "floor", "gateway"):
        assert summary[f"ttft_ms_99_ms_c8_{side}"] > 0, side
        assert summary[f"bytes_per_token_{side}"] > 0, side
    assert summary["streams_per_connection_gateway"] == 5  # 4 streams and the warm-up one, on one connection
    for side in ("floor", "gateway"):
        assert summary[f"rss_mib_20_{side}"] > 0, side
    assert summary["paced_total_ms_p50_ms_unary"] > 0
    assert summary["paced_samples_ms_p50_ms_stream"] > 0
    assert document["profile_top"][0].endswith("samples at 200 Hz") or document["profile_top"][0].startswith(
        "no profile"
    )
    assert all(value is None or value == value for value in summary.values())  # strict JSON: no NaN
    # The tables and the target lines, on stdout.
    for heading in ("TTFT p50 c=1 (ms)", "the gateway's variants", "streaming vs", "SSE vs gRPC", "targets:"):
        assert heading in run.stdout, heading
    assert "PASS  " in run.stdout or "FAIL  " in run.stdout
    # Progress: each step says when it starts and what it measured, on stderr (stdout is the tables).
    progress = [line for line in run.stderr.splitlines() if line.startswith("bench: [")]
    starts = [line for line in progress if line.endswith(" ...")]
    ends = [line for line in progress if line.endswith(" s)")]
    steps = len(starts)
    assert [line.split("]")[0] for line in starts] == [f"bench: [{n}/{steps}" for n in range(1, steps + 1)]
    assert [line.split("]")[0] for line in ends] == [line.split("]")[0] for line in starts]
    assert not any(line.startswith("bench: ") for line in run.stdout.splitlines())
    # --quick saved nothing into bench/results/.
    assert (sorted(RESULTS_DIR.iterdir()) if RESULTS_DIR.exists() else []) == saved_before


@pytest.mark.slow
def test_a_control_run_measures_both_gateways_in_each_paired_round_and_starts_only_the_sides_named(
    tmp_path: Path,
) -> None:
    out = tmp_path / "paired.json"
    flags = ["--only", "throughput", "--sides", "gateway_metrics", "--metrics-control", "--rounds", "2"]
    run = run_module("bench", *TINY, *flags, "--json", str(out), timeout=300)
    document = json.loads(out.read_text())
    # No other side started or ran, and the gateway's own rounds, which nothing here is compared with, neither.
    assert set(document["throughput"]) == {"gateway_metrics"}
    assert set(document["beside"]) == {"gateway_metrics"}
    for rounds in (document["throughput"]["gateway_metrics"], document["beside"]["gateway_metrics"]):
        assert len(rounds) == 2
        assert all(sum(load["tokens"] for load in r["loads"]) > 0 for r in rounds)
    starts = [line for line in run.stderr.splitlines() if line.startswith("bench: [") and line.endswith(" ...")]
    assert [line.split("] ")[1].split(",")[0] for line in starts] == ["paired round 1/2", "paired round 2/2"]
    assert "control: metrics off too (bench noise)" in run.stdout
    assert "not measured in a control run" in run.stdout


@pytest.mark.slow
def test_the_fairness_bench_runs_its_three_sides() -> None:
    run = run_module("bench.fairness", "--duration", "0.5", "--flood", "8", "--slots", "2", timeout=180)
    rows = {line.split("  ")[0]: line for line in run.stdout.splitlines()}
    assert {"steady alone", "fair queue", "no queue (refuse)"} <= set(rows)
    assert " - " not in rows["fair queue"]  # both clients had calls served
