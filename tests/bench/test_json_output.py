"""`bench --json`: the raw numbers land in bench/results/ (ignored by git) or in the file the user names,
never untracked in the repository root."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import report
from bench.results import QUICK, BenchResult, LoadResult, Machine, Settings, ThroughputResult, TtftResult

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def canned_result(settings: Settings, command: str | None = None) -> BenchResult:
    result = BenchResult(settings=settings, machine=Machine.this(), command=command or "python -m bench")
    result.ttft = {target: TtftResult(target, [1.0, 2.0]) for target in ("direct", "gateway")}
    load = LoadResult(
        concurrency=32, elapsed_s=2.0, tokens=20_000, streams=300, errors=0, cpu_percent=50.0, stream_ms=[]
    )
    result.throughput = {
        target: [ThroughputResult(target, [load], {"upstream": 50.0, "gateway": 90.0, "machine": 190.0})]
        for target in ("direct", "gateway")
    }
    return result


@pytest.fixture
def no_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """main() without the bench itself (a canned result), run from an empty folder; the results folder."""

    async def run_bench(settings: Settings) -> BenchResult:
        return canned_result(settings)

    monkeypatch.setattr(bench_main, "run_bench", run_bench)
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "results"


def test_json_without_a_file_writes_into_the_results_folder_not_the_current_one(no_bench: Path) -> None:
    assert bench_main.main(["--quick", "--json"]) == 0
    [written] = no_bench.iterdir()
    assert written.name.startswith("bench-")
    assert written.suffix == ".json"
    assert json.loads(written.read_text())["settings"]["rounds"] == QUICK.rounds
    assert list(Path.cwd().iterdir()) == []


def test_json_with_a_file_writes_there_making_its_folder(no_bench: Path, tmp_path: Path) -> None:
    target = tmp_path / "mine" / "run.json"
    assert bench_main.main(["--quick", "--json", str(target)]) == 0
    assert json.loads(target.read_text())["summary"]["ttft_p50_ms_gateway"] == 1.5
    assert not no_bench.exists()


def test_the_default_file_is_named_for_its_time_in_the_folder_git_ignores() -> None:
    path = report.default_json_path(datetime.datetime(2026, 12, 1, 14, 5, 9, tzinfo=datetime.UTC))
    assert path == REPO_ROOT / "bench" / "results" / "bench-20261201-140509.json"
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", str(path.relative_to(REPO_ROOT))], cwd=REPO_ROOT, check=False
    )
    assert ignored.returncode == 0, "bench/results/ must be in .gitignore"
