"""bench/limiter.py runs and prints its three lines (the figures themselves are for people, not tests)."""

from __future__ import annotations

import pytest

from bench.limiter import main


def test_the_limiter_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--calls", "200", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["every", "no", "empty"]
    assert "added" in lines[1]
