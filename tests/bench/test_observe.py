"""bench/observe.py runs and prints a line per figure (the figures themselves are for people, not tests)."""

from __future__ import annotations

import os

import pytest
from prometheus_client import values

from bench.observe import main


def test_the_observe_benchmark_runs_and_leaves_prometheus_as_it_found_it(capsys: pytest.CaptureFixture[str]) -> None:
    before, value_class = os.environ.get("PROMETHEUS_MULTIPROC_DIR"), values.ValueClass
    assert main(["--calls", "200", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[1].strip() for line in lines[1:]] == [
        "metrics",
        "scrape",
        "metrics, workers",
        "grpc metrics",
        "per message",
        "tracing 1.0",
        "tracing 0.1",
        "tracing 0.0",
    ]
    assert all(line.rstrip().endswith(")") and " µs  (" in line for line in lines[1:])
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") == before
    assert values.ValueClass is value_class, "this process's metrics keep their in-memory values"
