"""Converting a LiteLLM proxy config: what is carried over, what is named as not, and that it runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from server.config import load_config
from server.config.litellm_import import convert, main
from server.resilience.retry import RetryPolicy
from tests.conftest import UPSTREAM_KEY, GatewayFactory
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.rpc import collect_stream, request, stub_for

LITELLM = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      rpm: 600
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: os.environ/ANTHROPIC_API_KEY
      timeout: 90
  - model_name: local
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: {base}
      api_key: os.environ/FAKE_KEY
      weight: 3
  - model_name: local
    litellm_params:
      model: ollama/llama3.1
      api_base: http://127.0.0.1:11434
      weight: 1
  - model_name: azure-gpt
    litellm_params:
      model: azure/my-deployment
      api_base: https://example.openai.azure.com
      api_key: sk-literal-should-not-travel
router_settings:
  routing_strategy: simple-shuffle
  fallbacks: [{"gpt-4o": ["claude", "azure-gpt"]}]
general_settings:
  master_key: sk-1234
"""


def test_models_providers_deployments_and_fallbacks_are_carried_over() -> None:
    conversion = convert(yaml.safe_load(LITELLM.replace("{base}", "http://127.0.0.1:8000/v1")), env={})
    config = conversion.config
    assert config["providers"] == [
        {"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
        {
            "name": "anthropic",
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com",
            "api_key_env": "ANTHROPIC_API_KEY",
            "read_timeout_s": 90.0,
        },
        {
            "name": "hosted_vllm-127-0-0-1",
            "kind": "openai",
            "base_url": "http://127.0.0.1:8000/v1",
            "api_key_env": "FAKE_KEY",
        },
        {"name": "ollama-127-0-0-1", "kind": "openai", "base_url": "http://127.0.0.1:11434/v1"},
    ]
    assert config["models"] == [
        {"name": "gpt-4o", "provider": "openai", "upstream_model": "gpt-4o", "fallbacks": ["claude"]},
        {"name": "claude", "provider": "anthropic", "upstream_model": "claude-sonnet-4-5"},
        {
            "name": "local",
            "deployments": [
                {
                    "provider": "hosted_vllm-127-0-0-1",
                    "upstream_model": "meta-llama/Llama-3.1-8B-Instruct",
                    "weight": 3.0,
                },
                {"provider": "ollama-127-0-0-1", "upstream_model": "llama3.1", "weight": 1.0},
            ],
        },
    ]


def test_what_cannot_be_carried_over_is_named() -> None:
    notes = convert(yaml.safe_load(LITELLM.replace("{base}", "http://127.0.0.1:8000/v1")), env={}).notes
    assert notes == [
        "model_list[0] (gpt-4o): rpm limit not carried over (no rate limits yet)",
        "model_list[4] (azure-gpt): provider 'azure' is not supported here; entry skipped",
        "router_settings.fallbacks: gpt-4o -> azure-gpt: not a converted model",
        "router_settings.routing_strategy: not carried over",
        "general_settings.master_key: not carried over; configure auth.tokens (sha256 or env)",
    ]
    assert not any("sk-literal" in note or "sk-1234" in note for note in notes)


def test_a_literal_api_key_is_never_copied(tmp_path: Path) -> None:
    text = "model_list: [{model_name: m, litellm_params: {model: openai/gpt-4o, api_key: sk-literal-1234567}}]"
    conversion = convert(yaml.safe_load(text), env={})
    assert "sk-literal" not in yaml.safe_dump(conversion.config)
    assert conversion.notes == [
        "model_list[0].api_key: a literal API key is not carried over; put it in an environment variable"
    ]


async def test_a_converted_config_loads_and_serves(
    tmp_path: Path, make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    litellm = tmp_path / "litellm.yaml"
    litellm.write_text(
        textwrap.dedent(
            f"""
            model_list:
              - model_name: team-model
                litellm_params:
                  model: openai/gpt-test
                  api_base: {fake_openai.base_url}
                  api_key: os.environ/FAKE_KEY
                  tpm: 100000
            """
        )
    )
    out = tmp_path / "gateway.yaml"
    assert main([str(litellm), "-o", str(out)]) == 0

    config = load_config(out, env={"FAKE_KEY": UPSTREAM_KEY}, listen="127.0.0.1:0")
    gateway = await make_gateway(config)
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("team-model", "converted and running"))
    assert outcome.error is None
    assert "".join(outcome.deltas) == "converted and running"
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_the_command_reports_unreadable_input(tmp_path: Path) -> None:
    assert main([str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "list.yaml").write_text("- a\n")
    assert main([str(tmp_path / "list.yaml")]) == 2


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    litellm = tmp_path / "litellm.yaml"
    litellm.write_text("model_list: m\n  router_settings: {}\n")

    assert main([str(litellm)]) == 2

    assert capsys.readouterr().err == (
        f"litellm_import: LiteLLM config {litellm} is not valid YAML: line 2, column 18: "
        "mapping values are not allowed here\n"
    )


def test_the_command_runs_as_a_module(tmp_path: Path) -> None:
    litellm = tmp_path / "litellm.yaml"
    litellm.write_text("model_list: [{model_name: m, litellm_params: {model: openai/gpt-4o, rpm: 5}}]\n")
    run = subprocess.run(
        [sys.executable, "-m", "server.config.litellm_import", str(litellm)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert run.returncode == 0
    assert yaml.safe_load(run.stdout)["models"] == [{"name": "m", "provider": "openai", "upstream_model": "gpt-4o"}]
    assert run.stderr == "not carried over: model_list[0] (m): rpm limit not carried over (no rate limits yet)\n"


# --- num_retries: LiteLLM counts the retries after the first attempt, the gateway counts attempts ----------

ONE_MODEL = "model_list: [{model_name: m, litellm_params: {model: openai/gpt-4o}}]\n"


@pytest.mark.parametrize(
    ("settings", "max_attempts"),
    [
        pytest.param("router_settings: {num_retries: 4}", 5, id="router"),
        pytest.param("litellm_settings: {num_retries: 1}", 2, id="litellm_settings"),
        pytest.param("router_settings: {num_retries: 0}", 1, id="no retries"),
    ],
)
def test_num_retries_becomes_max_attempts_one_more(tmp_path: Path, settings: str, max_attempts: int) -> None:
    conversion = convert(yaml.safe_load(ONE_MODEL + settings), env={})

    assert conversion.config["retry"] == {"max_attempts": max_attempts}
    assert conversion.notes == []
    out = tmp_path / "gateway.yaml"
    out.write_text(yaml.safe_dump(conversion.config))
    assert load_config(out, env={"OPENAI_API_KEY": "sk-test-0123456789"}).retry.max_attempts == max_attempts


def test_without_num_retries_the_gateway_default_matches_litellm_default() -> None:
    # LiteLLM's Router retries twice by default (openai.DEFAULT_MAX_RETRIES): three attempts, as here.
    conversion = convert(yaml.safe_load(ONE_MODEL), env={})

    assert "retry" not in conversion.config
    assert RetryPolicy().max_attempts == 3


def test_router_num_retries_wins_over_litellm_settings_and_the_other_is_named() -> None:
    text = ONE_MODEL + "router_settings: {num_retries: 2}\nlitellm_settings: {num_retries: 7}\n"

    conversion = convert(yaml.safe_load(text), env={})

    assert conversion.config["retry"] == {"max_attempts": 3}
    assert conversion.notes == [
        "litellm_settings.num_retries: 7 is overridden by router_settings.num_retries (2), as in LiteLLM"
    ]


@pytest.mark.parametrize("value", ["-1", "'3'", "2.5", "true"])
def test_a_num_retries_that_is_not_a_count_is_named_not_carried(value: str) -> None:
    conversion = convert(yaml.safe_load(ONE_MODEL + f"router_settings: {{num_retries: {value}}}"), env={})

    assert "retry" not in conversion.config
    assert conversion.notes == [
        f"router_settings.num_retries: expected a whole number of retries, got {yaml.safe_load(value)!r}"
    ]


def test_a_deployment_num_retries_is_named_not_carried() -> None:
    text = "model_list: [{model_name: m, litellm_params: {model: openai/gpt-4o, num_retries: 3}}]\n"

    conversion = convert(yaml.safe_load(text), env={})

    assert "retry" not in conversion.config
    assert conversion.notes == [
        "model_list[0] (m): litellm_params.num_retries not carried over (retries are set for every model, by "
        "router_settings.num_retries here and retry.max_attempts in the gateway)"
    ]


def test_an_openai_compatible_entry_without_api_base_is_skipped_and_named() -> None:
    text = "model_list: [{model_name: local, litellm_params: {model: hosted_vllm/llama}}]\n"

    conversion = convert(yaml.safe_load(text), env={})

    assert conversion.config["models"] == []
    assert conversion.notes == ["model_list[0] (local): no api_base for provider 'hosted_vllm'; entry skipped"]
