"""The catalog part of the config file: aliases, deployments with weights, prices, fallbacks, presets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from server.config import ConfigError, load_config
from server.config.models import KIND_CAPABILITIES
from server.routing.catalog import DEFAULT_CAPABILITIES, Deployment, ModelConfig, Price


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_deployments_aliases_prices_and_fallbacks(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            providers:
              - {name: main, kind: demo}
              - {name: canary, kind: demo}
            aliases:
              standard: gpt
              simple: small
            models:
              - name: gpt
                aliases: [gpt-latest]
                deployments:
                  - {provider: main, upstream_model: gpt-4.1, weight: 95}
                  - {provider: canary, upstream_model: gpt-4.1-preview, weight: 5, name: canary-eu}
                price: {input: 8, output: 32}
                fallbacks: [small]
                max_tokens: 4096
              - {name: small, provider: main}
            """,
        ),
        env={},
    )
    gpt, small = config.models
    assert gpt == ModelConfig(
        name="gpt",
        max_tokens=4096,
        aliases=("gpt-latest",),
        deployments=(
            Deployment("main", "gpt-4.1", 95.0),
            Deployment("canary", "gpt-4.1-preview", 5.0, "canary-eu"),
        ),
        price=Price(8.0, 32.0),
        fallbacks=("small",),
        capabilities=DEFAULT_CAPABILITIES | KIND_CAPABILITIES["demo"],  # a demo provider's model caches, reasons
    )
    assert gpt.all_deployments[1].label == "canary-eu"
    assert small.all_deployments == (Deployment("main", "small"),)
    assert config.aliases == (("standard", "gpt"), ("simple", "small"))


def test_a_preset_provider_needs_only_its_name(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "providers: [{name: anthropic}]\nmodels: [{name: c, provider: anthropic}]"),
        env={"ANTHROPIC_API_KEY": "sk-ant-test-0123456789"},
    )
    [provider] = config.providers
    assert (provider.kind, provider.base_url, provider.api_key_env) == (
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
    )
    assert provider.api_key == "sk-ant-test-0123456789"


def test_a_preset_provider_without_its_key_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, "providers: [{name: gemini}]\nmodels: [{name: g, provider: gemini}]"), env={})
    assert str(raised.value) == "providers[0].api_key_env: environment variable GEMINI_API_KEY is not set or empty"


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        (
            "[{name: m, provider: demo, deployments: [{provider: demo}]}]",
            "models[0]: give either provider (one deployment) or deployments, not both",
        ),
        ("[{name: m, deployments: []}]", "models[0].deployments: at least one deployment is required"),
        ("[{name: m, deployments: [{upstream_model: x}]}]", "models[0].deployments[0].provider: required"),
        (
            "[{name: m, deployments: [{provider: demo, weight: 0}]}]",
            "models: model 'm' has no deployment with a weight above 0",
        ),
        ("[{name: m, provider: demo, price: {input: 1}}]", "models[0].price.output: expected a number, got None"),
        (
            "[{name: m, provider: demo, fallbacks: [nope]}]",
            "models: fallback 'nope' of model 'm' is not another model",
        ),
        ("[{name: m, provider: demo, fallbacks: [m]}]", "models: fallback 'm' of model 'm' is not another model"),
        (
            "[{name: m, provider: demo}, {name: n, provider: demo, aliases: [m]}]",
            "models: alias 'm' of model 'n' is already a name",
        ),
    ],
)
def test_catalog_problems(tmp_path: Path, models: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, f"providers: [{{name: demo, kind: demo}}]\nmodels: {models}"), env={})
    assert problem in str(raised.value).splitlines()


def test_an_alias_must_point_at_a_model(tmp_path: Path) -> None:
    text = "providers: [{name: demo, kind: demo}]\nmodels: [{name: m, provider: demo}]\naliases: {fast: nope}"
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), env={})
    assert str(raised.value) == "aliases: 'fast' points to 'nope', which is not a model"
