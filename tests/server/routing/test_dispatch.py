"""Resolving names to catalog models, picking deployments by weight, and costing calls."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from server.providers.demo import DemoProvider
from server.routing.catalog import Deployment, ModelConfig, Price
from server.routing.dispatch import Router
from server.types import ChatMessage, ChatRequest, Finish, Role, TextDelta, Usage


def router(models: list[ModelConfig], providers: tuple[str, ...] = ("demo",), **aliases: str) -> Router:
    return Router(models, {name: DemoProvider(name) for name in providers}, aliases)


def test_built_in_models_and_aliases_come_with_a_preset_provider() -> None:
    r = router([], providers=("openai", "anthropic", "gemini", "deepseek"))
    assert {"openai/gpt-4.1", "anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash"} <= set(r.model_names)
    for alias, target in [
        ("gpt-4.1", "openai/gpt-4.1"),
        ("claude-sonnet-4.5", "anthropic/claude-sonnet-4-5"),
        ("gemini-2.5-flash", "gemini/gemini-2.5-flash"),
        ("deepseek-v3.2", "deepseek/deepseek-chat"),
    ]:
        model = r.resolve(alias)
        assert model is not None
        assert model.name == target


def test_built_in_models_need_their_provider() -> None:
    r = router([], providers=("demo",))
    assert r.resolve("gpt-4.1") is None
    assert r.resolve("openai/gpt-4.1") is None


def test_a_config_model_wins_over_a_built_in_alias_of_the_same_name() -> None:
    mine = ModelConfig(name="gpt-4.1", provider="demo", upstream_model="echo")
    r = router([mine], providers=("demo", "openai"))
    assert r.resolve("gpt-4.1") is mine


def test_config_aliases_and_tiers() -> None:
    cheap = ModelConfig(name="cheap", provider="demo", aliases=("budget",))
    r = router([cheap], simple="cheap", advanced="openai/gpt-4.1", providers=("demo", "openai"))
    assert r.resolve("budget") is cheap
    assert r.resolve("simple") is cheap
    advanced = r.resolve("advanced")
    assert advanced is not None
    assert advanced.name == "openai/gpt-4.1"
    assert r.aliases_of("cheap") == ["budget", "simple"]


def test_provider_slash_model_passes_any_upstream_name_through() -> None:
    r = router([], providers=("demo", "deepseek"))
    model = r.resolve("deepseek/deepseek-chat-experimental")
    assert model is not None
    assert (model.provider, model.upstream_model) == ("deepseek", "deepseek-chat-experimental")
    assert r.resolve("nowhere/model") is None
    assert r.resolve("deepseek/") is None


def test_known_names_list_models_and_aliases() -> None:
    r = router([ModelConfig(name="m", provider="demo", aliases=("a",))])
    assert r.known_names == ("a", "m")


def test_weighted_deployments_split_traffic_by_weight() -> None:
    canary = ModelConfig(
        name="gpt",
        deployments=(Deployment("main", "gpt-4.1", weight=95), Deployment("canary", "gpt-4.1", weight=5)),
    )
    rng = random.Random(1234)
    r = Router([canary], {"main": DemoProvider("main"), "canary": DemoProvider("canary")}, rng=rng.random)
    picks = Counter(r.pick(canary).provider for _ in range(1000))
    assert 930 <= picks["main"] <= 970
    assert picks["main"] + picks["canary"] == 1000


def test_a_zero_weight_deployment_is_never_picked() -> None:
    model = ModelConfig(name="m", deployments=(Deployment("a", "x", weight=0), Deployment("b", "x", weight=1)))
    r = Router([model], {"a": DemoProvider("a"), "b": DemoProvider("b")}, rng=lambda: 0.0)
    assert {r.pick(model).provider for _ in range(10)} == {"b"}


@pytest.mark.parametrize(
    ("usage", "cost"),
    [
        (Usage(1_000_000, 0, 1_000_000), 8.0),
        (Usage(0, 1_000_000, 1_000_000), 32.0),
        (Usage(1000, 500, 1500), 0.008 + 0.016),
    ],
)
def test_price_times_usage(usage: Usage, cost: float) -> None:
    assert Price(8.0, 32.0).cost(usage) == pytest.approx(cost)


async def test_the_final_event_names_who_served_and_what_it_cost() -> None:
    model = ModelConfig(name="echo", provider="demo", upstream_model="demo", price=Price(1.0, 2.0))
    r = router([model])
    request = ChatRequest("echo", (ChatMessage(Role.USER, "one two three"),))
    events = [event async for event in r.stream(model, request)]
    assert events[:3] == [TextDelta("one"), TextDelta(" two"), TextDelta(" three")]
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert finish.served is not None
    assert (finish.served.model, finish.served.provider, finish.served.deployment) == ("echo", "demo", "demo/demo")
    assert finish.cost_usd == pytest.approx((3 * 1.0 + 3 * 2.0) / 1_000_000)

    completion = await r.complete(model, request)
    assert completion.served == finish.served
    assert completion.cost_usd == finish.cost_usd


async def test_no_price_means_no_cost() -> None:
    model = ModelConfig(name="echo", provider="demo", upstream_model="unpriced")
    completion = await router([model]).complete(model, ChatRequest("echo", (ChatMessage(Role.USER, "hi"),)))
    assert completion.cost_usd is None
