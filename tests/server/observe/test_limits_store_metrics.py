"""`gateway_limits_store_unavailable_total` is a plain counter: in one process it is in the gateway's
registry, and with workers (prometheus-client's multiprocess mode, as `--workers N` runs them) each worker
writes it to the multiprocess files, where the supervisor's collector finds the sum. The store tells its
observers (tests/server/policy/test_redis_store.py); tests/integration/test_shared_limits.py scrapes a
real supervisor."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

from server.observe.metrics import LimitsStoreMetrics


def test_in_one_process_both_outcomes_are_counted_and_present_before_the_first() -> None:
    registry = CollectorRegistry()
    metrics = LimitsStoreMetrics(registry)
    assert registry.get_sample_value("gateway_limits_store_unavailable_total", {"outcome": "served"}) == 0.0
    metrics.limits_store_unavailable("served")
    metrics.limits_store_unavailable("served")
    metrics.limits_store_unavailable("refused")

    assert registry.get_sample_value("gateway_limits_store_unavailable_total", {"outcome": "served"}) == 2.0
    assert registry.get_sample_value("gateway_limits_store_unavailable_total", {"outcome": "refused"}) == 1.0


def test_with_workers_the_supervisor_serves_the_sum_of_every_workers_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    workers = []
    for pid in (101, 102):  # two workers' values, each in its own files, as two processes would write them
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda pid=pid: pid))  # type: ignore[no-untyped-call]
        workers.append(LimitsStoreMetrics(CollectorRegistry()))
    workers[0].limits_store_unavailable("refused")
    workers[1].limits_store_unavailable("refused")
    workers[1].limits_store_unavailable("refused")

    supervisor = CollectorRegistry()
    MultiProcessCollector(supervisor, path=str(tmp_path))  # type: ignore[no-untyped-call]

    assert supervisor.get_sample_value("gateway_limits_store_unavailable_total", {"outcome": "refused"}) == 3.0
    assert supervisor.get_sample_value("gateway_limits_store_unavailable_total", {"outcome": "served"}) == 0.0
