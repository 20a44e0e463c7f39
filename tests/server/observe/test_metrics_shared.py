"""A worker's breaker and retry-budget gauges (`GatewayMetrics(shared=True)`): written when a call ends,
since the supervisor cannot read them out of the worker when it is scraped. Read here from the worker's
own registry, in-process; tests/integration/test_workers.py reads them through the supervisor."""

from __future__ import annotations

from unittest import mock

from prometheus_client import CollectorRegistry

from server.observe.metrics import GatewayMetrics, LabelBounds
from server.observe.record import CallRecord
from server.resilience.breaker import Admission, BreakerPolicy
from server.routing.catalog import Catalog, Deployment, ModelConfig
from server.routing.plan import Resilience

DEPLOYMENT = Deployment("up", "big")
CATALOG = Catalog([ModelConfig(name="chat", provider="up", upstream_model="big")], ["up"], {})


def shared_metrics() -> tuple[GatewayMetrics, Resilience, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(LabelBounds(CATALOG, [], ["up"]), registry, shared=True)
    resilience = Resilience(breaker=BreakerPolicy(consecutive_failures=1))
    metrics.watch(resilience)
    return metrics, resilience, registry


def state(registry: CollectorRegistry, name: str) -> float | None:
    labels = {"gen_ai_provider_name": "up", "deployment": "up/big", "state": name}
    return registry.get_sample_value("gateway_circuit_breaker_state", labels)


def ended() -> CallRecord:
    record = CallRecord("Generate", None, model="chat")
    record.finish()
    return record


def test_a_breaker_that_opened_during_a_call_is_written_when_the_call_ends() -> None:
    metrics, resilience, registry = shared_metrics()
    breaker = resilience.breaker(DEPLOYMENT)
    metrics.begun(ended())
    metrics.ended(ended())
    assert (state(registry, "closed"), state(registry, "open")) == (1.0, 0.0)

    breaker.record(breaker.allow(), ok=False)  # during the next call: the breaker opens
    assert state(registry, "open") == 0.0  # not yet: only the call's end writes it
    metrics.begun(ended())
    metrics.ended(ended())

    assert (state(registry, "closed"), state(registry, "open"), state(registry, "half_open")) == (0.0, 1.0, 0.0)


def test_a_budget_balance_is_written_when_a_call_ends() -> None:
    metrics, resilience, registry = shared_metrics()
    budget = resilience.budget("up")
    assert budget.try_spend()
    metrics.begun(ended())
    metrics.ended(ended())

    balance = registry.get_sample_value("gateway_retry_budget_balance", {"gen_ai_provider_name": "up"})
    assert balance == budget.balance == resilience.retry.budget_reserve - 1


def test_only_the_values_that_changed_are_written_again() -> None:
    metrics, resilience, _ = shared_metrics()
    resilience.breaker(DEPLOYMENT)
    metrics.begun(ended())
    metrics.ended(ended())
    with mock.patch("prometheus_client.Gauge.labels") as labels:
        metrics.begun(ended())
        metrics.ended(ended())  # nothing changed: no gauge is touched
        resilience.breaker(DEPLOYMENT).record(Admission.ADMITTED, ok=False)
        metrics.begun(ended())
        metrics.ended(ended())  # the breaker opened: closed and open are written, half_open is unchanged

    written = [call.args for call in labels.call_args_list]
    assert ("up", "up/big", "closed") in written
    assert ("up", "up/big", "open") in written
    assert ("up", "up/big", "half_open") not in written
