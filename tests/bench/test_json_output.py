"""Where a bench run's numbers land: `--json FILE` anywhere; a full run saves bench/results/latest.json
(with its chart, the gateway's profile and the README's tables); `--quick` saves nothing unless asked."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import readme, report, results
from bench.results import (
    QUICK,
    BenchResult,
    LoadResult,
    Machine,
    Settings,
    ThroughputResult,
    TtftResult,
    result_from_json,
)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


LOAD = LoadResult(concurrency=32, elapsed_s=2.0, tokens=20_000, streams=300, errors=0, cpu_percent=50.0, stream_ms=[])


def canned_result(settings: Settings, command: str | None = None) -> BenchResult:
    result = BenchResult(settings=settings, machine=Machine.this(), command=command or "python -m bench")
    result.ttft = {target: TtftResult(target, [1.0, 2.0]) for target in ("direct", "gateway", "floor")}
    result.throughput = {
        target: [ThroughputResult(target, [LOAD], {"upstream": 50.0, "proxy": 90.0, "machine": 190.0})]
        for target in ("direct", "gateway", "floor")
    }
    result.profile_top = ["10 samples at 200 Hz"]
    return result


@pytest.fixture
def no_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """main() without the bench itself (a canned result), run from an empty folder; the results folder."""

    async def run_bench(settings: Settings) -> BenchResult:
        return canned_result(settings)

    monkeypatch.setattr(bench_main, "run_bench", run_bench)
    monkeypatch.setattr(bench_main, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "results"


def test_json_with_a_file_writes_there_making_its_folder(no_bench: Path, tmp_path: Path) -> None:
    target = tmp_path / "mine" / "run.json"
    assert bench_main.main(["--quick", "--json", str(target)]) == 0
    document = json.loads(target.read_text())
    assert document["summary"]["ttft_p50_ms_gateway"] == 1.5
    assert document["settings"]["rounds"] == QUICK.rounds
    assert not no_bench.exists()
    assert list(Path.cwd().iterdir()) == []


def test_a_quick_run_saves_nothing_unless_asked(no_bench: Path) -> None:
    assert bench_main.main(["--quick"]) == 0
    assert not no_bench.exists()


def test_a_saved_run_is_its_json_its_chart_and_the_gateways_profile(tmp_path: Path) -> None:
    readme_before = readme.README.read_text()
    lines = bench_main.save(canned_result(QUICK), tmp_path)

    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["summary"]["gateway_us_per_token"] == pytest.approx(90 / 100 / 10_000 * 1e6)
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "profile-gateway.txt").read_text().splitlines()[1] == "10 samples at 200 Hz"
    assert lines[0] == f"saved: {tmp_path / 'latest.json'}"
    assert readme.README.read_text() == readme_before  # only a save into bench/results/ updates the README


def test_git_keeps_the_saved_run_and_ignores_every_other_file_in_the_results_folder() -> None:
    def ignored(path: Path) -> bool:
        relative = str(path.relative_to(REPO_ROOT))
        return subprocess.run(["git", "check-ignore", "--no-index", "-q", relative], cwd=REPO_ROOT).returncode == 0

    kept = [report.RESULTS_DIR / name for name in ("latest.json", "latest.png", "profile-gateway.txt")]
    assert not any(ignored(path) for path in kept)
    assert ignored(report.default_json_path())
    assert ignored(report.RESULTS_DIR / "scratch.txt")


def test_a_saved_run_reads_back_into_the_same_result() -> None:
    result = canned_result(QUICK)
    result.throughput["litellm"] = [
        ThroughputResult("litellm", [dataclasses.replace(LOAD, tokens=0)], {"proxy": 90.0}),  # nothing in its window
        ThroughputResult("litellm", [LOAD], {"proxy": 90.0}),
    ]
    saved = json.loads(json.dumps(report.document(result)))

    again = result_from_json(saved)

    assert report.document(again) == saved
    # A round without a token in its window does not count: the median is the other round's.
    assert saved["summary"]["litellm_us_per_token"] == pytest.approx(90 / 100 / 10_000 * 1e6)


def test_from_json_renders_a_saved_run_without_running_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(report.document(canned_result(QUICK))))

    assert bench_main.main(["--from-json", str(saved), "--no-save"]) == 0
    assert "gateway, 1 worker" in capsys.readouterr().out


def test_sides_and_the_metrics_control_run_reach_the_settings_and_an_unknown_side_is_refused() -> None:
    args = bench_main._parser().parse_args(["--sides", "gateway_metrics,floor", "--metrics-control"])
    settings = bench_main.settings_from(args)
    assert settings.sides == ("gateway_metrics", "floor")
    assert settings.metrics_control is True
    assert bench_main.settings_from(bench_main._parser().parse_args([])).sides == ()

    with pytest.raises(ValueError, match="--sides: unknown nginx; choose from direct, floor"):
        bench_main.settings_from(bench_main._parser().parse_args(["--sides", "floor,nginx"]))


def test_a_control_run_names_its_metrics_row_as_noise_and_judges_no_metrics_target() -> None:
    def with_metrics_side(control: bool) -> str:
        result = canned_result(dataclasses.replace(QUICK, metrics_control=control))
        result.throughput["gateway_metrics"] = [ThroughputResult("gateway_metrics", [LOAD], {"proxy": 99.0})]
        return report.render(result)

    measured, control = with_metrics_side(False), with_metrics_side(True)

    assert "metrics on (scraped every 1 s)" in measured
    assert report.CONTROL not in measured
    # 99 against 90 µs: +10 %; the same tokens/s
    assert "metrics cost at most 5 % CPU per token and tokens/s: +10.0 % CPU per token, +0.0 % tokens/s" in measured
    assert "FAIL  metrics cost" in measured
    assert report.CONTROL in control
    assert "metrics on (scraped" not in control
    assert "n/a   metrics cost at most 5 % CPU per token and tokens/s: not measured in a control run" in control


def test_a_saved_run_keeps_its_sides() -> None:
    result = canned_result(dataclasses.replace(QUICK, sides=("floor",)))
    assert result_from_json(json.loads(json.dumps(report.document(result)))).settings.sides == ("floor",)


def test_the_ttft_target_splits_the_gateways_first_token_into_its_own_path_and_its_upstream_call() -> None:
    result = canned_result(QUICK)
    result.ttft = {
        "direct": TtftResult("direct", [0.45]),
        "floor": TtftResult("floor", [0.87]),
        "gateway": TtftResult("gateway", [2.69]),
        "gateway-demo": TtftResult("gateway-demo", [1.00]),
    }

    rendered = report.render(result)

    assert (
        "TTFT p50 at c=1 within 0.5 ms of the floor's: +1.82 ms "
        "(the gateway's own path +0.13 ms, its upstream call 1.69 ms; direct 0.45 ms)"
    ) in rendered

    for side, us in (("floor", 150.0), ("gateway-demo", 400.0), ("gateway", 900.0)):
        result.ttft[side] = dataclasses.replace(result.ttft[side], proxy_cpu_us_per_call=us)
    assert "direct 0.45 ms; CPU per call: floor 150 µs, demo model 400 µs, upstream model 900 µs)" in report.render(
        result
    )
    assert "its offline demo model (no upstream)" in rendered


def test_the_table_says_how_each_variant_was_measured_and_shows_the_gateway_beside_it() -> None:
    result = canned_result(QUICK)
    result.throughput["gateway_metrics"] = [ThroughputResult("gateway_metrics", [LOAD], {"proxy": 103.0})]
    result.beside["gateway_metrics"] = [ThroughputResult("gateway", [LOAD], {"proxy": 100.0})]
    rendered = report.render(result)
    assert "ran at the same time as it, sharing the proxy's CPU" in rendered
    assert "the gateway beside it: tokens/s" in rendered
    row = next(line for line in rendered.splitlines() if line.startswith("metrics on"))
    # the gateway beside it (tokens/s, CPU), then the changes in tokens/s and in CPU, then TTFT (none here)
    assert row.split()[-7:] == ["10,000", "100.0", "+0.0", "%", "+3.0", "%", "n/a"]


def test_paired_rounds_take_the_median_of_every_rounds_difference_with_no_orders_to_average() -> None:
    result = canned_result(QUICK)
    result.throughput["gateway"] = [ThroughputResult("gateway", [LOAD], {"proxy": 50.0})] * 3  # not beside it
    result.beside["gateway_metrics"] = [ThroughputResult("gateway", [LOAD], {"proxy": 100.0})] * 3
    result.throughput["gateway_metrics"] = [
        ThroughputResult("gateway_metrics", [LOAD], {"proxy": cpu}) for cpu in (101.0, 102.0, 110.0)
    ]
    assert report.variant_changes(result)["change_cpu_percent_gateway_metrics"] == pytest.approx(2.0)


def test_httpx_rounds_in_the_gateways_own_average_the_medians_of_the_two_orders() -> None:
    result = canned_result(QUICK)
    result.throughput["gateway"] = [ThroughputResult("gateway", [LOAD], {"proxy": 100.0})] * 3
    result.throughput["gateway-httpx"] = [
        ThroughputResult("gateway-httpx", [LOAD], {"proxy": cpu}) for cpu in (101.0, 102.0, 110.0)
    ]
    changes = report.variant_changes(result)
    assert changes["change_cpu_percent_gateway-httpx"] == pytest.approx((5.5 + 2.0) / 2)  # rounds 1 and 3, then 2


def test_a_run_saved_before_paired_rounds_were_the_default_still_loads() -> None:
    doc = report.document(canned_result(QUICK))
    doc["settings"]["paired"] = False
    del doc["beside"]
    assert results.result_from_json(doc).beside == {}


def test_a_run_saved_with_paired_reads_its_gateway_rounds_as_beside_its_variant() -> None:
    result = canned_result(QUICK)
    result.throughput["gateway"] = [ThroughputResult("gateway", [LOAD], {"proxy": 100.0})]
    result.throughput["gateway_metrics"] = [ThroughputResult("gateway_metrics", [LOAD], {"proxy": 104.0})]
    doc = json.loads(json.dumps(report.document(result)))
    doc["settings"]["paired"] = True
    del doc["beside"]
    loaded = results.result_from_json(doc)
    assert "gateway" not in loaded.throughput
    assert [r.target for r in loaded.beside["gateway_metrics"]] == ["gateway"]
    assert report.variant_changes(loaded)["change_cpu_percent_gateway_metrics"] == pytest.approx(4.0)
