"""Counters, gauges and histograms whose children are plain numbers, rendered only when scraped.

prometheus-client's own metrics take a lock for every `inc` and `observe` and walk the buckets one by one;
a call ends with about fifteen of them, and in a process that serves thousands of tokens a second they
cost more than their count suggests (cold caches): with them, metrics on cost 5.7 % CPU per token in
`make bench`'s paired rounds, with these 4.2 %. These families are written to from the event loop only,
with no lock: a child is a few numbers in `__slots__`, and `observe` is one `bisect` and two additions.
The scrape, in the metrics listener's thread, copies what it reads; under the GIL, a scrape sees each number
whole, and may see a histogram's sum a few observations ahead of its buckets (prometheus-client's own, one
lock per number, has the same window).

The text a scrape renders is prometheus-client's for the same metric: the same names, `_total`,
`_bucket{le=…}`, `_count`, `_sum` and `_created` samples (none of the last with its
PROMETHEUS_DISABLE_CREATED_SERIES), and the same label order (tests/server/observe/test_lean.py checks
this against prometheus-client's own classes).

With several worker processes the gateway uses prometheus-client's classes instead, whose multiprocess
values are the files its supervisor adds up (server/observe/metrics.py, `shared`).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as client_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["LEAN", "PROMETHEUS_CLIENT", "LeanCounter", "LeanGauge", "LeanHistogram", "MetricKinds"]

# How prometheus-client writes an `le` bound ("0.005", "1.0", "+Inf"); untyped there.
_go_float: Callable[[float], str] = floatToGoString


def _created_series() -> bool:
    """Whether prometheus-client writes `_created` samples: not with PROMETHEUS_DISABLE_CREATED_SERIES=True
    or after its `disable_created_metrics()`."""
    return bool(client_metrics._use_created)


class _Family(Collector):
    """One metric's children by label values, rendered by `collect`. A family without labels has one
    child, `sole`, there from the start (as prometheus-client's: its sample is 0 before any `inc`)."""

    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        unit: str = "",
        registry: CollectorRegistry | None = None,
        **_multiprocess: Any,  # prometheus-client's multiprocess_mode: nothing to do in one process
    ) -> None:
        self._metric = Metric(name, documentation, self.kind, unit)
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self.sole: Any = self.labels() if not self._labelnames else None
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        return child if child is not None else self._new_child(values)

    def _new_child(self, values: tuple[Any, ...]) -> Any:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._metric.name} takes {len(self._labelnames)} label values, not {len(values)}")
        key = tuple(map(str, values))  # as prometheus-client: a label value is its str()
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._child()
        return child

    def _child(self) -> Any:
        raise NotImplementedError

    def describe(self) -> Iterable[Metric]:
        return [self._empty()]

    def collect(self) -> Iterable[Metric]:
        metric = self._empty()
        for values, child in self._children.copy().items():  # copy(): one C call, safe beside the loop
            self._add_samples(metric, dict(zip(self._labelnames, values, strict=True)), child)
        return [metric]

    def _empty(self) -> Metric:
        found = self._metric
        return Metric(found.name, found.documentation, found.type, found.unit)

    def _add_samples(self, metric: Metric, labels: dict[str, str], child: Any) -> None:
        raise NotImplementedError


class _Count:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class LeanCounter(_Family):
    kind = "counter"

    def inc(self, amount: float = 1) -> None:
        self.sole.inc(amount)

    def _child(self) -> _Count:
        return _Count()

    def _add_samples(self, metric: Metric, labels: dict[str, str], child: _Count) -> None:
        metric.add_sample(metric.name + "_total", labels, child.value)
        if _created_series():
            metric.add_sample(metric.name + "_created", labels, child.created)


class _Level:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class LeanGauge(_Family):
    kind = "gauge"

    def inc(self, amount: float = 1) -> None:
        self.sole.inc(amount)

    def dec(self, amount: float = 1) -> None:
        self.sole.dec(amount)

    def set(self, value: float) -> None:
        self.sole.set(value)

    def _child(self) -> _Level:
        return _Level()

    def _add_samples(self, metric: Metric, labels: dict[str, str], child: _Level) -> None:
        metric.add_sample(metric.name, labels, child.value)


class _Observations:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: one addition per observation
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        bounds = self._bounds
        bucket = bisect_left(bounds, amount)  # the first bound >= amount: Prometheus's `le`
        if amount <= bounds[bucket]:  # NaN is in no bucket, as in prometheus-client
            self.counts[bucket] += 1


class LeanHistogram(_Family):
    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float], **options: Any
    ) -> None:
        bounds = [float(b) for b in buckets]  # checked as prometheus-client checks them
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        self._bounds = tuple(bounds)
        self._les = tuple(_go_float(b) for b in self._bounds)
        super().__init__(name, documentation, labelnames, **options)  # last: registering it collects it

    def observe(self, amount: float) -> None:
        self.sole.observe(amount)

    def _child(self) -> _Observations:
        return _Observations(self._bounds)

    def _add_samples(self, metric: Metric, labels: dict[str, str], child: _Observations) -> None:
        counts, total, name = child.counts[:], child.sum, metric.name
        cumulative = 0
        for le, count in zip(self._les, counts, strict=True):
            cumulative += count
            metric.add_sample(name + "_bucket", {**labels, "le": le}, cumulative)
        metric.add_sample(name + "_count", labels, cumulative)
        if self._bounds[0] >= 0:  # prometheus-client has no sum when a bucket is negative
            metric.add_sample(name + "_sum", labels, total)
        if _created_series():
            metric.add_sample(name + "_created", labels, child.created)


@dataclass(frozen=True, slots=True)
class MetricKinds:
    """The classes a set of metrics is made of: lean ones in one process, prometheus-client's (whose
    values are multiprocess files) in a worker."""

    counter: Callable[..., Any]
    gauge: Callable[..., Any]
    histogram: Callable[..., Any]


LEAN = MetricKinds(LeanCounter, LeanGauge, LeanHistogram)
PROMETHEUS_CLIENT = MetricKinds(Counter, Gauge, Histogram)
