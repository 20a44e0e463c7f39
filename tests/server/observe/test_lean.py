"""The lean metric families render exactly what prometheus-client's own classes render after the same
writes: same names, samples, label order and values (the `_created` times aside, which differ by when
each was made)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)

from server.observe.lean import LeanCounter, LeanGauge, LeanHistogram

# prometheus-client's switch for the `_created` samples (untyped there).
disable_created: Callable[[], None] = disable_created_metrics
enable_created: Callable[[], None] = enable_created_metrics

BUCKETS = (0.005, 0.1, 1.0, 2.5, 64.0, 1e6)
LABELS = ("method", "code")
label_values = st.tuples(st.sampled_from(["Generate", "StreamGenerate"]), st.sampled_from(["OK", "Canceled", 'a"b\\c']))
amounts = st.one_of(
    st.floats(min_value=0, max_value=2e6, allow_nan=False),
    st.sampled_from([0.0, *BUCKETS]),  # exactly on a bound: `le` includes it
    st.integers(min_value=0, max_value=10**6),
)
# What a histogram may also be given: NaN is in no bucket, infinities in the first and the last.
observed = st.one_of(amounts, st.sampled_from([math.nan, math.inf, -math.inf, -1.5]))


def rendered(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines without the `_created` samples."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def both(
    make_client: Callable[[CollectorRegistry], Any], make_lean: Callable[[CollectorRegistry], Any]
) -> tuple[CollectorRegistry, Any, CollectorRegistry, Any]:
    client_registry, lean_registry = CollectorRegistry(), CollectorRegistry()
    return client_registry, make_client(client_registry), lean_registry, make_lean(lean_registry)


@given(st.lists(st.tuples(label_values, observed), max_size=40))
def test_a_histogram_renders_as_prometheus_clients_does(observations: list[tuple[tuple[str, str], float]]) -> None:
    client_registry, client, lean_registry, lean = both(
        lambda r: Histogram("call_seconds", "Seconds.", LABELS, buckets=BUCKETS, registry=r),
        lambda r: LeanHistogram("call_seconds", "Seconds.", LABELS, buckets=BUCKETS, registry=r),
    )
    for values, amount in observations:
        client.labels(*values).observe(amount)
        lean.labels(*values).observe(amount)
    assert rendered(lean_registry) == rendered(client_registry)


@given(st.lists(st.tuples(label_values, amounts), max_size=40))
def test_a_counter_renders_as_prometheus_clients_does(increments: list[tuple[tuple[str, str], float]]) -> None:
    client_registry, client, lean_registry, lean = both(
        lambda r: Counter("calls", "Calls.", LABELS, registry=r),
        lambda r: LeanCounter("calls", "Calls.", LABELS, registry=r),
    )
    for values, amount in increments:
        client.labels(*values).inc(amount)
        lean.labels(*values).inc(amount)
    assert rendered(lean_registry) == rendered(client_registry)


@given(st.lists(st.tuples(st.sampled_from(["inc", "dec", "set"]), amounts), max_size=20))
def test_a_gauge_without_labels_renders_as_prometheus_clients_does(writes: list[tuple[str, float]]) -> None:
    client_registry, client, lean_registry, lean = both(
        lambda r: Gauge("open_sessions", "Sessions.", registry=r),
        lambda r: LeanGauge("open_sessions", "Sessions.", registry=r),
    )
    assert rendered(lean_registry) == rendered(client_registry)  # 0 before the first write
    for write, amount in writes:
        getattr(client, write)(amount)
        getattr(lean, write)(amount)
    assert rendered(lean_registry) == rendered(client_registry)


def test_units_and_created_samples_are_named_as_prometheus_clients_are() -> None:
    client_registry, client, lean_registry, lean = both(
        lambda r: Histogram("wait", "Wait.", ("code",), unit="seconds", buckets=(1.0,), registry=r),
        lambda r: LeanHistogram("wait", "Wait.", ("code",), unit="seconds", buckets=(1.0,), registry=r),
    )
    client.labels("OK").observe(0.5)
    lean.labels("OK").observe(0.5)
    names = [line.split("{")[0].split(" ")[0] for line in generate_latest(lean_registry).decode().splitlines()]
    assert names == [
        line.split("{")[0].split(" ")[0] for line in generate_latest(client_registry).decode().splitlines()
    ]
    assert "wait_seconds_created" in names


def test_created_samples_go_when_prometheus_client_leaves_them_out() -> None:
    """PROMETHEUS_DISABLE_CREATED_SERIES=True, or prometheus-client's `disable_created_metrics()`."""
    client_registry, client, lean_registry, lean = both(
        lambda r: Counter("calls", "Calls.", LABELS, registry=r),
        lambda r: LeanCounter("calls", "Calls.", LABELS, registry=r),
    )
    client.labels("Generate", "OK").inc()
    lean.labels("Generate", "OK").inc()
    disable_created()
    try:
        assert generate_latest(lean_registry) == generate_latest(client_registry)
        assert b"_created" not in generate_latest(lean_registry)
    finally:
        enable_created()
    assert b"calls_created" in generate_latest(lean_registry)


def test_families_without_labels_and_label_values_that_are_not_strings_work_as_prometheus_clients() -> None:
    client_registry, client, lean_registry, lean = both(
        lambda r: (
            Counter("calls", "Calls.", registry=r),
            Histogram("wait", "Wait.", ("n",), buckets=BUCKETS, registry=r),
        ),
        lambda r: (
            LeanCounter("calls", "Calls.", registry=r),
            LeanHistogram("wait", "Wait.", ("n",), buckets=BUCKETS, registry=r),
        ),
    )
    for counter, histogram in (client, lean):
        counter.inc(2)
        histogram.labels(7).observe(0.5)  # an int label value is its str()
        histogram.labels("7").observe(1.5)
    assert rendered(lean_registry) == rendered(client_registry)
    assert 'wait_count{n="7"} 2.0' in rendered(lean_registry)


def test_what_prometheus_client_refuses_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        LeanCounter("calls", "Calls.").inc(-1)
    with pytest.raises(ValueError, match="sorted"):
        LeanHistogram("wait", "Wait.", buckets=(2.0, 1.0))
    with pytest.raises(ValueError, match="at least two buckets"):
        LeanHistogram("wait", "Wait.", buckets=(math.inf,))


def test_a_histogram_without_labels_observes_into_its_one_child() -> None:
    registry = CollectorRegistry()
    LeanHistogram("wait", "Wait.", buckets=(1.0,), registry=registry).observe(0.5)
    assert 'wait_bucket{le="1.0"} 1.0' in rendered(registry)


def test_the_wrong_number_of_label_values_is_refused() -> None:
    calls = LeanCounter("calls", "Calls.", LABELS)
    with pytest.raises(ValueError, match="calls takes 2 label values, not 1"):
        calls.labels("Generate")


def test_a_name_two_families_share_is_refused_by_the_registry() -> None:
    registry = CollectorRegistry()
    Counter("calls", "Calls.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LeanCounter("calls", "Calls.", registry=registry)


def test_a_scrape_beside_new_children_being_made_never_fails() -> None:
    """The scrape runs in the metrics listener's thread while the loop makes children: it reads a copy."""
    registry = CollectorRegistry()
    calls = LeanHistogram("calls", "Calls.", ("n",), buckets=(1.0,), registry=registry)
    stop = threading.Event()
    failures: list[BaseException] = []

    def scrape() -> None:
        while not stop.is_set():
            try:
                generate_latest(registry)
            except BaseException as exc:  # whatever the scrape raised is the failure
                failures.append(exc)
                return

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for n in range(20_000):
            calls.labels(str(n)).observe(math.pi)
    finally:
        stop.set()
        scraper.join()
    assert failures == []
    assert generate_latest(registry).decode().count("calls_count{") == 20_000
