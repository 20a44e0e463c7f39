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
    assert "metrics (the gateway, same load)" in run.stdout
    summary = json.loads(out.read_text())["summary"]
    assert summary
    assert all(value is not None for value in summary.values()), summary
    assert summary["tokens_per_s_gateway_metrics"] > 0
    changes = json.loads(out.read_text())["metrics_changes_percent"]
    assert set(changes) == {"tokens/s", "gateway CPU per token"}
    assert all(value is not None for value in changes.values()), changes
