"""Label values come from a fixed set: the catalog's names, the configured providers and clients; what a
call's record writes when it ends, through the bounded cache of each kind of call's series."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from server.observe.metrics import SERIES_KEY_CHARS, SERIES_LIMIT, GatewayMetrics, LabelBounds
from server.observe.record import CallRecord
from server.routing.catalog import Catalog, Deployment, ModelConfig
from server.routing.plan import Resilience
from server.types import Served, Usage

CATALOG = Catalog(
    [
        ModelConfig(name="chat", provider="up", upstream_model="big", aliases=("default",)),
        ModelConfig(name="split", deployments=(Deployment("up", "a", weight=95, name="main"), Deployment("up", "b"))),
    ],
    ["up"],
    {"tier-1": "chat"},
)
BOUNDS = LabelBounds(CATALOG, clients=["billing"], providers=["up"])


@pytest.mark.parametrize(
    ("asked", "label"),
    [
        ("chat", "chat"),
        ("default", "default"),  # an alias is a catalog name: kept as asked
        ("tier-1", "tier-1"),
        ("up/anything-a-client-typed", "up/*"),  # a pass-through: the provider only
        ("nowhere/x", "unknown"),
        ("gpt-\u2603\n<script>", "unknown"),
        ("", ""),
    ],
)
def test_a_model_label_is_a_catalog_name_a_providers_pass_through_or_unknown(asked: str, label: str) -> None:
    assert BOUNDS.model(asked) == label


@pytest.mark.parametrize(
    ("served", "label"),
    [
        (Served("chat", "up", "up/big"), "up/big"),
        (Served("split", "up", "main"), "main"),  # a named deployment
        (Served("split", "up", "up/b"), "up/b"),
        (Served("up/x", "up", "up/x"), "up/*"),
        (Served("x", "gone", "gone/x"), "unknown/*"),
    ],
)
def test_a_deployment_label_is_the_catalogs_or_its_providers_pass_through(served: Served, label: str) -> None:
    assert BOUNDS.deployment(served) == label


def test_clients_are_the_configured_names_and_anonymous_without_auth() -> None:
    assert [BOUNDS.client(c) for c in ("billing", None, "someone-else")] == ["billing", "anonymous", "unknown"]


@pytest.mark.parametrize(
    ("reason", "label"),
    [("", ""), ("UPSTREAM_UNAVAILABLE", "UPSTREAM_UNAVAILABLE"), ("upstream said: no", "OTHER"), ("A" * 65, "OTHER")],
)
def test_a_reason_label_is_an_upper_snake_name_or_other(reason: str, label: str) -> None:
    assert BOUNDS.reason(reason) == label


def test_breaker_keys_of_pass_through_names_are_not_upstreams_of_the_catalog() -> None:
    assert BOUNDS.is_upstream("up/a")
    assert not BOUNDS.is_upstream("up/anything")


def ended_call(model: str, served: Served | None = None, client: str | None = None) -> CallRecord:
    record = CallRecord("StreamGenerate", client, model=model)
    record.first_token_s = 0.01
    record.served, record.usage, record.cost_usd = served, Usage(3, 5, 8), 0.5
    record.finish()
    return record


def test_what_a_call_writes_when_it_ends_is_counted_under_its_bounded_labels() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(BOUNDS, registry)
    for client in ("billing", "billing", "stranger"):
        record = ended_call("default", Served("chat", "up", "up/big"), client)
        metrics.begun(record)
        metrics.ended(record)

    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_request_model": "default",
        "gen_ai_response_model": "chat",
        "gen_ai_provider_name": "up",
        "deployment": "up/big",
    }
    for client, calls in (("billing", 2), ("unknown", 1)):
        labels = {"grpc_method": "StreamGenerate", "client": client, "gen_ai_request_model": "default"}
        assert registry.get_sample_value("gateway_calls_total", {**labels, "code": "OK", "reason": ""}) == calls
        tokens = {"client": client, **genai}
        assert registry.get_sample_value("gateway_tokens_total", {**tokens, "gen_ai_token_type": "output"}) == 5 * calls
        assert registry.get_sample_value("gateway_cost_usd_total", tokens) == 0.5 * calls
    usage = {**genai, "gen_ai_token_type": "input"}
    assert registry.get_sample_value("gen_ai_client_token_usage_sum", usage) == 9
    assert registry.get_sample_value("gen_ai_server_time_to_first_token_seconds_count", genai) == 3
    duration = {**genai, "error_type": ""}
    assert registry.get_sample_value("gen_ai_client_operation_duration_seconds_count", duration) == 3
    assert registry.get_sample_value("gateway_calls_in_flight", {"grpc_method": "StreamGenerate"}) == 0


def test_a_call_without_a_first_token_usage_or_cost_makes_no_such_series() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(BOUNDS, registry)
    record = CallRecord("Generate", None, model="chat", code="UNAVAILABLE", reason="UPSTREAM_UNAVAILABLE")
    record.finish()
    metrics.begun(record)
    metrics.ended(record)

    names = {sample.name for family in registry.collect() for sample in family.samples}
    assert "gen_ai_client_operation_duration_seconds_count" in names
    assert not names & {
        "gen_ai_server_time_to_first_token_seconds_count",
        "gen_ai_client_token_usage_count",
        "gateway_tokens_total",
        "gateway_cost_usd_total",
    }


def test_the_series_a_made_up_model_name_brings_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(BOUNDS, registry)
    for n in range(SERIES_LIMIT * 2 + 10):
        record = ended_call(f"nowhere/{n}")  # each its own kind of call, all labelled unknown
        metrics.begun(record)
        metrics.ended(record)
        assert len(metrics._series) <= SERIES_LIMIT

    labels = {"grpc_method": "StreamGenerate", "client": "anonymous", "gen_ai_request_model": "unknown"}
    assert registry.get_sample_value("gateway_calls_total", {**labels, "code": "OK", "reason": ""}) == (
        SERIES_LIMIT * 2 + 10
    )


@pytest.mark.parametrize(
    "record",
    [
        ended_call("nowhere/" + "x" * SERIES_KEY_CHARS),
        ended_call("up/x", Served("up/" + "x" * SERIES_KEY_CHARS, "up", "up/" + "x" * SERIES_KEY_CHARS)),
    ],
    ids=["asked", "passed-through"],
)
def test_a_call_with_a_very_long_model_name_is_counted_but_its_series_are_not_kept(record: CallRecord) -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(BOUNDS, registry)
    metrics.begun(record)
    metrics.ended(record)

    assert metrics._series == {}
    [calls] = [
        s for f in registry.collect() if f.name == "gateway_calls" for s in f.samples if s.name.endswith("_total")
    ]
    assert (calls.labels["gen_ai_request_model"], calls.value) == (BOUNDS.model(record.model), 1)


def test_after_a_reload_the_new_configs_label_values_apply() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(BOUNDS, registry)
    for bounds in (BOUNDS, LabelBounds(CATALOG, clients=[], providers=["up"])):
        metrics.watch(Resilience(), bounds)
        record = ended_call("chat", client="billing")
        metrics.begun(record)
        metrics.ended(record)

    calls = {"grpc_method": "StreamGenerate", "gen_ai_request_model": "chat", "code": "OK", "reason": ""}
    assert registry.get_sample_value("gateway_calls_total", {**calls, "client": "billing"}) == 1
    assert registry.get_sample_value("gateway_calls_total", {**calls, "client": "unknown"}) == 1, "billing is gone"
