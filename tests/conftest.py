"""Shared fixtures: real gateways on 127.0.0.1 with free ports, fake upstreams, TLS material."""

from __future__ import annotations

import hashlib
import os
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from server.app import Gateway, start_gateway
from server.config import (
    AuthConfig,
    ClientToken,
    GatewayConfig,
    ModelConfig,
    ProviderConfig,
    TLSConfig,
    default_config,
)
from server.resilience.retry import RetryPolicy
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tools.devcerts import CertFiles, make_certs

# A runaway test (an unbounded buffer, a loop that never yields) once grew pytest to 24 GB and the machine's OOM
# killer ended the whole run with no word of which test. Past this address-space cap Python raises MemoryError
# in the test instead, with its traceback; gateway children inherit the cap. The suite needs well under 1 GB.
SUITE_ADDRESS_SPACE_CAP_BYTES = 8 * 2**30


def pytest_configure(config: pytest.Config) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = SUITE_ADDRESS_SPACE_CAP_BYTES if hard == resource.RLIM_INFINITY else min(hard, SUITE_ADDRESS_SPACE_CAP_BYTES)
    if soft == resource.RLIM_INFINITY or soft > cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


CLIENT_TOKEN = "test-client-token-0123456789"
# The first word, then an hour of silence before the next: a stream that, while a test runs, only the client
# (a cancel, a disconnect) or the gateway (a drain, a timer the test configured) can end.
ENDLESS = "slow-tokens-3600000"
UPSTREAM_KEY = "sk-test-upstream-key-abcdef0123456789"
# Catalog models of `openai_config`: each name is served by the fake upstream model of the same name,
# which chooses its behaviour (see tests/fakes/openai_upstream.py).
FAKE_MODELS = (
    "gpt-test",
    "no-usage",
    "split-bytes",
    "fault-400",
    "fault-401",
    "fault-403",
    "fault-408",
    "fault-429",
    "fault-429-no-retry-after",
    "fault-429-ms",
    "fault-500",
    "fault-502",
    "fault-503",
    "fault-reset-before",
    "fault-reset-mid",
    "fault-cut-mid",
    "fault-inband-error-before",
    "fault-inband-error-after",
    "fault-inband-ratelimit-before",
    "fault-inband-invalid-before",
    "fault-malformed",
    "fault-stall",
    "slow-tokens-50",
    ENDLESS,
)

GatewayFactory = Callable[[GatewayConfig], Awaitable[Gateway]]


def client_auth() -> AuthConfig:
    return AuthConfig(tokens=(ClientToken("test-client", hashlib.sha256(CLIENT_TOKEN.encode()).digest()),))


def openai_config(base_url: str, **overrides: object) -> GatewayConfig:
    """A gateway config with one OpenAI-compatible provider at `base_url` and the demo provider.

    Retries are off (one upstream attempt per call), so each fault maps to exactly one upstream answer;
    tests/integration/test_chaos.py turns them on.
    """
    provider = ProviderConfig(
        name="fake-openai", kind="openai", base_url=base_url, api_key_env="FAKE_KEY", api_key=UPSTREAM_KEY
    )
    models = tuple(ModelConfig(name=m, provider="fake-openai", upstream_model=m) for m in FAKE_MODELS)
    config = GatewayConfig(
        listen="127.0.0.1:0",
        providers=(ProviderConfig(name="demo", kind="demo"), provider),
        models=(ModelConfig(name="demo", provider="demo", upstream_model="demo"), *models),
        grace_period_s=1.0,
        retry=RetryPolicy(max_attempts=1),
    )
    from dataclasses import replace

    return replace(config, **overrides)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_tracing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's OTEL_* variables must not turn tracing on in the gateways tests start."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
async def make_gateway() -> AsyncIterator[GatewayFactory]:
    """Start gateways from configs; every one is stopped at teardown."""
    started: list[Gateway] = []

    async def factory(config: GatewayConfig) -> Gateway:
        gateway = await start_gateway(config)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        await gateway.stop(0)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        yield upstream


@pytest.fixture
async def demo_gateway(make_gateway: GatewayFactory) -> Gateway:
    """The embedded default config (demo model only), on a free port."""
    return await make_gateway(default_config(env={}, listen="127.0.0.1:0"))


@pytest.fixture
async def openai_gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    """A plaintext gateway without auth in front of the fake OpenAI upstream."""
    return await make_gateway(openai_config(fake_openai.base_url))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def secure_gateway(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, tls_files: CertFiles
) -> Gateway:
    """TLS + bearer auth, in front of the fake OpenAI upstream."""
    config = openai_config(
        fake_openai.base_url,
        tls=TLSConfig(cert_file=tls_files.server_cert, key_file=tls_files.server_key),
        auth=client_auth(),
    )
    return await make_gateway(config)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
