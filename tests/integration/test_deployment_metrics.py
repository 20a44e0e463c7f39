"""Comparing deployments: a canary beside its main deployment, told apart in /metrics by the `deployment`
label of the upstream attempts (success ratio), the time to first token and the tokens, as the
dashboard's "Canary vs main" row reads them."""

from __future__ import annotations

from server.app import Gateway
from server.config import GatewayConfig, MetricsConfig, ModelConfig, ProviderConfig
from server.resilience.breaker import BreakerPolicy
from server.resilience.retry import RetryPolicy
from server.routing.catalog import Deployment
from tests.conftest import UPSTREAM_KEY, GatewayFactory
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.metrics import Scrape
from tests.rpc import collect_stream, request, stub_for

CALLS = 40


def canary_config(base_url: str) -> GatewayConfig:
    """`split` picks its main deployment or its failing canary half the time each; a call that tried the
    canary first is retried on main at once. Breakers and the retry budget stay out of the way."""
    provider = ProviderConfig(name="fake", kind="openai", base_url=base_url, api_key_env="K", api_key=UPSTREAM_KEY)
    split = ModelConfig(
        name="split",
        deployments=(
            Deployment("fake", "gpt-test", weight=50, name="main"),
            Deployment("fake", "fault-503", weight=50, name="canary"),
        ),
    )
    return GatewayConfig(
        listen="127.0.0.1:0",
        providers=(provider,),
        models=(split,),
        retry=RetryPolicy(max_attempts=2, budget_reserve=1000),
        circuit_breaker=BreakerPolicy(enabled=False),
        metrics=MetricsConfig(listen="127.0.0.1:0"),
    )


async def test_a_canary_and_its_main_deployment_are_told_apart_by_success_ttft_and_tokens(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway: Gateway = await make_gateway(canary_config(fake_openai.base_url))
    async with stub_for(gateway) as stub:
        outcomes = [await collect_stream(stub, request("split", "one two three")) for _ in range(CALLS)]
    scrape = await Scrape.of(gateway)

    assert [o.error for o in outcomes] == [None] * CALLS
    assert {f.deployment for o in outcomes for f in o.finals} == {"main"}
    attempts = "gateway_upstream_attempts_total"
    tried_canary = scrape.value(attempts, deployment="canary")
    assert tried_canary >= 1  # half the calls try it first: none of 40 would be 1 in 2^40
    assert scrape.value(attempts, deployment="canary", outcome="unavailable") == tried_canary
    assert scrape.value(attempts, deployment="main", outcome="ok") == scrape.value(attempts, deployment="main") == CALLS
    assert scrape.value("gateway_upstream_retries_total", deployment="main") == tried_canary
    ttft = "gen_ai_server_time_to_first_token_seconds_count"
    assert scrape.value(ttft, deployment="main") == CALLS
    assert scrape.value(ttft, deployment="canary") == 0
    tokens = "gen_ai_client_token_usage_sum"
    assert scrape.value(tokens, deployment="main", gen_ai_token_type="output") == 3 * CALLS
    assert scrape.value("gateway_tokens_total", deployment="main", gen_ai_token_type="output") == 3 * CALLS
