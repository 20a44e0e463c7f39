"""The example configs in examples/ start as shipped, and the full one names every option.

Each file is loaded, and started as `python -m server --config examples/X.yaml` in a child process, with
the variables its header tells a newcomer to export (placeholder keys: starting needs no network) and from a
scratch folder laid out like a checkout after `make certs`: examples/ copied beside a fresh dev/tls/, so
that relative TLS paths resolve exactly as in a checkout. `--listen 127.0.0.1:0` replaces only the port
(the loading test checks that the shipped address is loopback).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from client.defaults import TOKEN_ENV
from server.config import (
    ClientConfig,
    ClientLimits,
    GatewayConfig,
    InteractiveConfig,
    KeepaliveConfig,
    LimitsConfig,
    MetricsConfig,
    ProviderConfig,
    is_loopback_host,
    load_config,
    parse_listen,
)
from server.resilience.breaker import BreakerPolicy
from server.resilience.retry import RetryPolicy
from server.routing.catalog import Deployment, ModelConfig, Price, Shadow
from tests.process import SAFETY_TIMEOUT_S, health_check, run_gateway
from tools.devcerts import CertFiles, make_certs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# What each example's header says to export. A new example must be added here (a test checks it).
EXAMPLE_ENV: dict[str, dict[str, str]] = {
    "gateway.yaml": {
        "OPENAI_API_KEY": "sk-example-0123456789",
        "ANTHROPIC_API_KEY": "sk-ant-example-0123456789",
        "GATEWAY_TOKEN": "dev-token-0123456789",
        "TEAM_KEY_1": "sk-team-1-0123456789",
        "TEAM_KEY_2": "sk-team-2-0123456789",
        "INTERNAL_SIGNING_SECRET": "signing-secret-0123456789",
    },
    "secure.yaml": {"GATEWAY_TOKEN": "dev-token-0123456789"},
    "teams.yaml": {
        "OPENAI_API_KEY": "sk-example-0123456789",
        "ANTHROPIC_API_KEY": "sk-ant-example-0123456789",
        "SEARCH_TEAM_TOKEN": "search-token-0123456789",
        "SUPPORT_TEAM_TOKEN": "support-token-0123456789",
    },
}


def example_names() -> list[str]:
    return sorted(path.name for path in EXAMPLES.glob("*.yaml"))


@dataclass(frozen=True, slots=True)
class Checkout:
    examples: Path  # a copy of examples/
    certs: CertFiles  # dev/tls/ beside it, as `make certs` writes it

    def load(self, name: str) -> GatewayConfig:
        return load_config(self.examples / name, env=EXAMPLE_ENV[name])


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    shutil.copytree(EXAMPLES, tmp_path / "checkout" / "examples")
    (tmp_path / "checkout" / "dev" / "tls").mkdir(parents=True)
    return Checkout(tmp_path / "checkout" / "examples", make_certs(tmp_path / "checkout" / "dev" / "tls"))


def test_every_example_has_its_variables_listed() -> None:
    assert set(example_names()) == set(EXAMPLE_ENV)


@pytest.mark.parametrize("name", example_names())
def test_each_example_loads_on_a_loopback_address(name: str, checkout: Checkout) -> None:
    listen = checkout.load(name).listen
    host, _ = parse_listen(listen)
    assert is_loopback_host(host), listen


@pytest.mark.slow
@pytest.mark.parametrize("name", example_names())
async def test_each_example_starts_and_serves(name: str, checkout: Checkout) -> None:
    tls = checkout.load(name).tls is not None
    args = ("--config", str(checkout.examples / name), "--listen", "127.0.0.1:0")
    # As with --listen, only the port of a metrics listener is replaced: another test may hold 9464.
    env = {**EXAMPLE_ENV[name], "GATEWAY_METRICS_LISTEN": "127.0.0.1:0"}
    async with run_gateway(*args, env=env) as gateway:
        address = await gateway.wait_ready()
        credentials = grpc.ssl_channel_credentials(checkout.certs.ca_cert.read_bytes()) if tls else None
        channel = grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
        async with channel:
            reply = await health_check(channel)(HealthCheckRequest(service=""), timeout=SAFETY_TIMEOUT_S)
        assert reply.status == HealthCheckResponse.SERVING


def test_the_secure_example_serves_the_demo_over_tls_to_the_clients_token_variable(checkout: Checkout) -> None:
    config = checkout.load("secure.yaml")
    assert config.listen == "127.0.0.1:50052"
    assert config.tls is not None
    assert config.tls.cert_file == checkout.examples / "../dev/tls/server.crt"
    assert config.auth is not None
    assert [t.name for t in config.auth.tokens] == ["local-developer"]
    assert [m.name for m in config.models] == ["demo"]


def test_the_full_example_serves_metrics_on_loopback(checkout: Checkout) -> None:
    assert checkout.load("gateway.yaml").metrics.listen == "127.0.0.1:9464"


def test_the_full_example_takes_make_certs_output(checkout: Checkout) -> None:
    config = checkout.load("gateway.yaml")
    assert config.tls is not None
    assert config.tls.cert_file.resolve() == checkout.certs.server_cert.resolve()
    assert config.tls.key_file.resolve() == checkout.certs.server_key.resolve()


def test_the_examples_read_the_token_from_the_variable_the_client_reads() -> None:
    """The server's token variable and the client's are one name (issue 8, item 7). teams.yaml has a token
    per team instead (its header passes one to the client as GATEWAY_TOKEN)."""
    for name in [name for name in example_names() if name != "teams.yaml"]:
        raw = yaml.safe_load((EXAMPLES / name).read_text())
        variables = [token["env"] for token in raw.get("auth", {}).get("tokens", []) if "env" in token]
        assert variables == [TOKEN_ENV], name


# --- "every option" -------------------------------------------------------------------------------------

# YAML keys whose names differ from the config dataclass's field names.
# The key and secret themselves (read from the variables named), the keys after the first (api_key_env as a list),
# and fallbacks' mapping form.
_NOT_KEYS = {"api_key", "extra_api_keys", "signing_secret", "fallbacks_by_class"}


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - _NOT_KEYS


# Config fields set from a section of their own: `log: {level, format}` sets log_level and log_format.
_SECTION_FIELDS = {"log": {"log_level", "log_format"}}


def _top_level_fields(raw: dict[str, Any]) -> set[str]:
    return {field for key in raw for field in _SECTION_FIELDS.get(key, {key})}


def _keys(items: list[dict[str, Any]]) -> set[str]:
    return {key for item in items for key in item}


def test_the_full_example_names_every_option() -> None:
    """A new option in the config types fails here until examples/gateway.yaml shows it."""
    raw = yaml.safe_load((EXAMPLES / "gateway.yaml").read_text())
    models = raw["models"]
    assert _top_level_fields(raw) == _fields(GatewayConfig)
    assert set(raw["log"]) == {"level", "format"}
    assert _keys(raw["providers"]) == _fields(ProviderConfig)
    assert set(raw["tls"]) == {"cert_file", "key_file"}
    assert _keys(raw["auth"]["tokens"]) == {"name", "sha256", "env"}
    assert _keys(models) == _fields(ModelConfig)
    assert _keys([d for m in models for d in m.get("deployments", [])]) == _fields(Deployment)
    assert _keys([m["price"] for m in models if "price" in m]) == {
        f.removesuffix("_per_million") for f in _fields(Price)
    }
    # certificates need tls.client_ca_file, and a gateway with it refuses the start test's plain health check.
    assert _keys(raw["clients"]) | {"certificates"} == _fields(ClientConfig)
    assert "# certificates:" in (EXAMPLES / "gateway.yaml").read_text()
    assert set(raw["client_defaults"]) == {"models", "limits"}
    for limits in (*(c["limits"] for c in raw["clients"]), raw["client_defaults"]["limits"]):
        assert set(limits) == _fields(ClientLimits)
    assert _keys([m["shadow"] for m in models if "shadow" in m]) == _fields(Shadow)
    fallback_classes = _keys([m["fallbacks"] for m in models if isinstance(m.get("fallbacks"), dict)])
    assert fallback_classes == {"default", "rate_limited", "unavailable"}
    assert any(isinstance(m.get("fallbacks"), list) for m in models), "the plain-list form of fallbacks"
    assert 0 in {d["weight"] for m in models for d in m.get("deployments", [])}, "a standby deployment"
    assert any(set(p) == {"name"} for p in raw["providers"]), "a preset provider given by name alone"
    sections: dict[str, type] = {
        "interactive": InteractiveConfig,
        "retry": RetryPolicy,
        "circuit_breaker": BreakerPolicy,
        "limits": LimitsConfig,
        "keepalive": KeepaliveConfig,
        "metrics": MetricsConfig,
    }
    for key, cls in sections.items():
        assert set(raw[key]) == _fields(cls), key


def test_the_teams_example_gives_two_teams_different_models_and_limits(checkout: Checkout) -> None:
    config = checkout.load("teams.yaml")
    search, support = config.clients
    assert (search.name, support.name) == ("search", "support")
    assert len(search.tokens) == 2, "the search team is mid-rotation: two tokens"
    assert search.models != support.models
    assert search.limits != support.limits
    assert support.limits.budget_usd_per_month is None, "left to client_defaults"
    assert config.client_defaults.limits.budget_usd_per_month == 200


def test_the_readme_shows_the_teams_example_as_it_is() -> None:
    """README's "Clients, limits and budgets" excerpt is examples/teams.yaml's clients, written shorter."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = [yaml.safe_load(block) for block in readme.split("```yaml\n")[1:] for block in [block.split("```")[0]]]
    [excerpt] = [block for block in blocks if isinstance(block, dict) and "clients" in block]
    example = yaml.safe_load((EXAMPLES / "teams.yaml").read_text())
    assert excerpt["clients"] == example["clients"]
    assert excerpt["client_defaults"] == example["client_defaults"]
