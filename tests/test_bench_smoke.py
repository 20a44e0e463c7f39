"""`make bench` works end to end: three kinds of processes, one table, every figure measured.

Targets are not asserted here (figures belong to `make bench`, not to timed tests); only that the
benchmark runs, cleans up after itself, and produces every number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_bench_measures_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TTFT p50 (c=1)" in run.stdout
    assert "tokens/s (c=32, 64-token streams)" in run.stdout
    # The same gateway through its httpx transport, side by side with aiohttp.
    assert "gateway via httpx: CPU per token" in run.stdout
    # And the gateway with metrics off and on, under the same load.
    assert "metrics (the gateway, same load)" in run.stdout
    document = json.loads(out.read_text())
    summary = document["summary"]
    assert summary
    assert all(value is not None for value in summary.values()), summary
    assert summary["tokens_per_s_gateway_metrics"] > 0
    assert summary["tokens_per_s_gateway-httpx"] > 0
    changes = document["metrics_changes_percent"]
    assert set(changes) == {"tokens/s", "gateway CPU per token"}
    assert all(value is not None for value in changes.values()), changes
    # Progress: each scenario says when it starts and what it measured, on stderr (stdout is the table).
    progress = [line for line in run.stderr.splitlines() if line.startswith("bench: ")]
    assert progress[0] == "bench: starting the fake upstream and the gateway ..."
    starts = [line for line in progress if line.endswith(" ...")][1:]
    ends = [line for line in progress if line.endswith(" s)")]
    assert [line.split("]")[0] for line in starts] == [f"bench: [{n}/7" for n in range(1, 8)]
    assert [line.split("]")[0] for line in ends] == [line.split("]")[0] for line in starts]
    assert "time to first token, direct" in starts[0]
    assert "time to first token, gateway_metrics" in starts[2]
    assert "throughput round 1/1, gateway:" in starts[4]
    assert "throughput round 1/1, gateway_metrics:" in starts[5]
    assert "throughput round 1/1, gateway-httpx:" in starts[6]
    assert "TTFT p50" in ends[1]
    assert "tokens/s" in ends[4]
    assert progress.index(starts[4]) < progress.index(ends[4])
    assert not any(line.startswith("bench: ") for line in run.stdout.splitlines())


@pytest.mark.slow
def test_the_fairness_bench_runs_its_three_sides() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.fairness", "--duration", "0.5", "--flood", "8", "--slots", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split("  ")[0]: line for line in run.stdout.splitlines()}
    assert {"steady alone", "fair queue", "no queue (refuse)"} <= set(rows)
    assert " - " not in rows["fair queue"]  # both clients had calls served
