"""The catalog: names to catalog models (built-ins, aliases, passthrough), and prices."""

from __future__ import annotations

import pytest

from server.routing.catalog import Catalog, Deployment, ModelConfig, Price, cost_of
from server.types import Usage


def catalog(models: list[ModelConfig], providers: tuple[str, ...] = ("demo",), **aliases: str) -> Catalog:
    return Catalog(models, providers, aliases)


def test_built_in_models_and_aliases_come_with_a_preset_provider() -> None:
    r = catalog([], providers=("openai", "anthropic", "gemini", "deepseek"))
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
    r = catalog([], providers=("demo",))
    assert r.resolve("gpt-4.1") is None
    assert r.resolve("openai/gpt-4.1") is None


def test_a_config_model_wins_over_a_built_in_alias_of_the_same_name() -> None:
    mine = ModelConfig(name="gpt-4.1", provider="demo", upstream_model="echo")
    r = catalog([mine], providers=("demo", "openai"))
    assert r.resolve("gpt-4.1") is mine


def test_config_aliases_and_tiers() -> None:
    cheap = ModelConfig(name="cheap", provider="demo", aliases=("budget",))
    r = catalog([cheap], simple="cheap", advanced="openai/gpt-4.1", providers=("demo", "openai"))
    assert r.resolve("budget") is cheap
    assert r.resolve("simple") is cheap
    advanced = r.resolve("advanced")
    assert advanced is not None
    assert advanced.name == "openai/gpt-4.1"
    assert r.aliases_of("cheap") == ["budget", "simple"]


def test_provider_slash_model_passes_any_upstream_name_through() -> None:
    r = catalog([], providers=("demo", "deepseek"))
    model = r.resolve("deepseek/deepseek-chat-experimental")
    assert model is not None
    assert (model.provider, model.upstream_model) == ("deepseek", "deepseek-chat-experimental")
    assert r.resolve("nowhere/model") is None
    assert r.resolve("deepseek/") is None


def test_known_names_list_models_and_aliases() -> None:
    r = catalog([ModelConfig(name="m", provider="demo", aliases=("a",))])
    assert r.known_names == ("a", "m")


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


def test_a_model_without_a_price_costs_what_its_upstream_model_costs_built_in() -> None:
    model = ModelConfig(name="mine", provider="openai", upstream_model="gpt-4.1")
    deployment = model.all_deployments[0]
    assert cost_of(model, deployment, Usage(1_000_000, 0, 1_000_000)) == pytest.approx(8.0)
    assert cost_of(model, Deployment("x", "unknown-model"), Usage(1, 1, 2)) is None
    assert cost_of(model, deployment, None) is None
