"""The Grafana dashboard (deploy/grafana/gateway.json) asks only for metrics the gateway exports: after a run
with every kind of call (a retry, a fallback, a failure, an InteractiveStream session), each metric name its
PromQL queries and variables use is in a scrape of /metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from server.app import Gateway
from server.config import GatewayConfig, MetricsConfig, ModelConfig, Price, ProviderConfig
from server.resilience.retry import RetryPolicy
from server.routing.catalog import Deployment, Shadow
from tests.conftest import UPSTREAM_KEY, GatewayFactory
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi
from tests.metrics import wait_for_scrape
from tests.rpc import collect_stream, request, stub_for, unary_request

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gateway.json"

# What is not a metric name in a PromQL expression: its keywords and aggregation modifiers.
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"})
_KEYWORDS |= {"offset", "inf", "nan"}
_MODIFIER_LABELS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords or labels."""
    if match := re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr.strip()):
        return {match.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors ($__rate_interval, 1d)
    text = _MODIFIER_LABELS.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        following = text[match.end() :].lstrip()[:1]
        if following != "(" and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def queries(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression of the dashboard's panels (rows included) and its variables."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["query"]["query"]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, deployment) (rate(gen_ai_x_bucket{a="b",c=~"$m"}[$__rate_interval])))'
        " / on (deployment) group_left sum(gateway_y_total) * 3600 > bool 0"
    )
    assert metric_names(expr) == {"gen_ai_x_bucket", "gateway_y_total"}
    assert metric_names("label_values(gateway_calls_total, client)") == {"gateway_calls_total"}


def run_config(base_url: str) -> GatewayConfig:
    """`standby` retries on its weight-0 deployment; `flaky` falls back to `echo`; `down` fails; `echo` has
    a price (no cost is counted without one); `mirrored` has every call shadowed by `echo`."""
    provider = ProviderConfig(
        name="fake", kind="openai", base_url=base_url, api_key_env="FAKE_KEY", api_key=UPSTREAM_KEY
    )
    models = (
        ModelConfig(name="echo", provider="fake", upstream_model="gpt-test", price=Price(1.0, 2.0)),
        ModelConfig(name="flaky", provider="fake", upstream_model="fault-503", fallbacks=("echo",)),
        ModelConfig(name="down", provider="fake", upstream_model="fault-400"),
        ModelConfig(
            name="standby",
            deployments=(Deployment("fake", "fault-503", weight=1), Deployment("fake", "gpt-test", weight=0)),
        ),
        ModelConfig(
            name="mirrored", provider="fake", upstream_model="gpt-test", shadow=Shadow(model="echo", percent=100)
        ),
    )
    return GatewayConfig(
        listen="127.0.0.1:0",
        providers=(provider,),
        models=models,
        grace_period_s=1.0,
        retry=RetryPolicy(max_attempts=2, backoff_base_s=0.001, backoff_cap_s=0.002),
        metrics=MetricsConfig(listen="127.0.0.1:0"),
    )


async def run_every_kind_of_call(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        await stub.Generate(unary_request("echo"), timeout=10)
        for model in ("echo", "standby", "flaky", "mirrored"):
            assert (await collect_stream(stub, request(model))).error is None
        failed = await collect_stream(stub, request("down"))
        assert failed.error is not None
        assert failed.error.code() is grpc.StatusCode.INVALID_ARGUMENT
        bidi = Bidi(stub)
        await bidi.start("echo")
        await bidi.turn("1", "hello")
        await bidi.until_end_of("1")
        assert (await bidi.finish()).code is grpc.StatusCode.OK


async def test_every_metric_the_dashboard_queries_is_exported_after_a_run(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    gateway = await make_gateway(run_config(fake_openai.base_url))
    await run_every_kind_of_call(gateway)
    scrape = await wait_for_scrape(gateway, "gateway_shadow_calls_total")  # a shadow ends after its call

    used = {name for expr in queries(dashboard) for name in metric_names(expr)}
    assert len(used) >= 15
    assert used - scrape.names == set()
    shadow_panels = {name for name in used if name.startswith("gateway_shadow_")}
    assert len(shadow_panels) >= 7, shadow_panels  # calls, dropped, TTFT, duration, difference, cost, tokens
    assert scrape.value("gateway_upstream_retries_total", deployment="fake/gpt-test") == 1
    assert scrape.value("gateway_fallbacks_total", from_model="flaky", to_model="echo") == 1
