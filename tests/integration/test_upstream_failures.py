"""A dead upstream behind a real gateway, called by the real Python client: the first calls report the real
cause (what failed, where), the client does not multiply the gateway's attempts, and CIRCUIT_OPEN appears
only after the configured number of failing calls.

The gateway's retry waits run on a fake clock (Resilience's clock and sleep), so nothing here waits on the
wall clock; the upstreams are real sockets on 127.0.0.1 (tests/fakes/dead_upstreams.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

import grpc
import pytest

from client import AsyncAIClient, TextDelta
from client.errors import GatewayError
from server.app import Gateway
from server.config import TRANSPORTS, GatewayConfig, ModelConfig, ProviderConfig, TransportName
from server.resilience.breaker import BreakerPolicy
from server.resilience.retry import RetryPolicy
from tests.conftest import UPSTREAM_KEY, GatewayFactory, openai_config
from tests.fakes.dead_upstreams import plaintext_server, refused_port, silent_server
from tests.server.scripted import FakeTime

pytestmark = pytest.mark.asyncio

FAILING_CALLS = 3  # the breaker's consecutive_failures
ATTEMPTS = 3  # the gateway's attempts per call


def dead_config(base_url: str, **provider: Any) -> GatewayConfig:
    """The gateway with one provider "dead" at `base_url` and its model "dead-model"."""
    dead = ProviderConfig(
        name="dead", kind="openai", base_url=base_url, api_key_env="DEAD_KEY", api_key=UPSTREAM_KEY, **provider
    )
    base = openai_config("http://127.0.0.1:9/v1")
    return replace(
        base,
        providers=(*base.providers, dead),
        models=(*base.models, ModelConfig(name="dead-model", provider="dead", upstream_model="gpt-test")),
        retry=RetryPolicy(max_attempts=ATTEMPTS),
        circuit_breaker=BreakerPolicy(consecutive_failures=FAILING_CALLS, cooldown_s=30.0),
    )


async def start(make_gateway: GatewayFactory, base_url: str, **provider: Any) -> tuple[Gateway, FakeTime]:
    gateway = await make_gateway(dead_config(base_url, **provider))
    time = FakeTime()
    # Before the first call, so that the breakers (made on first use) take the fake clock too.
    gateway.router.resilience.clock = time.clock
    gateway.router.resilience.sleep = time.sleep
    return gateway, time


async def stream_error(client: AsyncAIClient) -> tuple[list[str], GatewayError]:
    """What the client saw of one StreamGenerate call that failed: its deltas, then the error."""
    seen: list[str] = []
    try:
        async for event in client.stream_generate("hi", model="dead-model"):
            if isinstance(event, TextDelta):
                seen.append(event.text)
    except GatewayError as error:
        return seen, error
    raise AssertionError(f"the call succeeded after {seen}")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="server.access")
    caplog.set_level(logging.DEBUG, logger="server.routing.plan")  # last: it sets the handler's level too
    return caplog


def attempts_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server.routing.plan"]


def calls_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.name == "server.access")


async def test_the_first_calls_to_a_refused_upstream_say_so_and_circuit_open_comes_only_after_them(
    make_gateway: GatewayFactory, logs: pytest.LogCaptureFixture
) -> None:
    async with refused_port() as base_url:
        gateway, _ = await start(make_gateway, base_url)
        address = base_url.removeprefix("http://").removesuffix("/v1")
        refusal = f"cannot connect to upstream dead at {address}: connection refused"
        async with AsyncAIClient(target=f"127.0.0.1:{gateway.port}", plaintext=True) as client:  # default retries
            outcomes = [await stream_error(client) for _ in range(FAILING_CALLS + 1)]

    for seen, error in outcomes[:FAILING_CALLS]:
        assert seen == []
        assert (error.code, error.reason, error.message) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            refusal,
        )
        assert {k: error.metadata[k] for k in ("cause", "upstream_address", "client_retry", "provider")} == {
            "cause": "connection_refused",
            "upstream_address": address,
            "client_retry": "no",
            "provider": "dead",
        }
    # Calls 1 and 2 made all their attempts; the failure of call 3's first attempt opened the breaker.
    assert [e.metadata["attempts"] for _, e in outcomes[:FAILING_CALLS]] == ["3", "3", "1"]
    assert outcomes[FAILING_CALLS - 1][1].metadata["retry_stopped_by"] == "circuit_open"

    seen, after = outcomes[FAILING_CALLS]
    assert seen == []
    assert (after.code, after.reason) == (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN")
    assert after.message == (
        "model dead-model and its fallbacks are failing: every deployment's circuit is open "
        f"(last failure of dead/gpt-test: {refusal}); retry in 30 s"
    )
    assert (after.metadata["cause"], after.metadata["upstream_address"], after.metadata["client_retry"]) == (
        "connection_refused",
        address,
        "no",
    )

    # One gateway call per client call (the client retried nothing), and 3 + 3 + 1 upstream attempts.
    assert calls_logged(logs) == FAILING_CALLS + 1
    assert len(attempts_logged(logs)) == 2 * ATTEMPTS + 1
    assert attempts_logged(logs)[0] == (
        f"attempt 1 of dead-model on dead/gpt-test failed (UPSTREAM_UNAVAILABLE): {refusal}"
    )


async def test_generate_through_the_channels_retry_policy_is_one_gateway_call(
    make_gateway: GatewayFactory, logs: pytest.LogCaptureFixture
) -> None:
    async with refused_port() as base_url:
        gateway, time = await start(make_gateway, base_url)
        async with AsyncAIClient(target=f"127.0.0.1:{gateway.port}", plaintext=True) as client:
            with pytest.raises(GatewayError) as raised:
                await client.generate("hi", model="dead-model")

    assert (raised.value.reason, raised.value.metadata["cause"]) == ("UPSTREAM_UNAVAILABLE", "connection_refused")
    assert calls_logged(logs) == 1
    assert len(attempts_logged(logs)) == ATTEMPTS
    assert len(time.sleeps) == ATTEMPTS - 1  # the gateway's backoffs, on the fake clock


@contextlib.asynccontextmanager
async def silent_url() -> AsyncIterator[str]:
    async with silent_server() as (base_url, _):
        yield base_url


@pytest.mark.parametrize(
    ("upstream", "provider", "code", "reason", "cause", "says"),
    [
        pytest.param(
            refused_port, {}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "connection_refused",
            "cannot connect to upstream dead at {address}: connection refused", id="refused",
        ),
        pytest.param(
            plaintext_server, {}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "tls_failure",
            "cannot connect to upstream dead at {address}: TLS handshake failed (WRONG_VERSION_NUMBER)", id="tls",
        ),
        pytest.param(
            silent_url, {"read_timeout_s": 0.05}, grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT",
            "read_timeout", "upstream dead at {address} timed out while waiting for data", id="never-answers",
        ),
    ],
)  # fmt: skip
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_status_and_the_log_say_what_failed_and_where_never_the_key(
    make_gateway: GatewayFactory,
    logs: pytest.LogCaptureFixture,
    transport: TransportName,
    upstream: Callable[[], AbstractAsyncContextManager[str]],
    provider: dict[str, Any],
    code: grpc.StatusCode,
    reason: str,
    cause: str,
    says: str,
) -> None:
    async with upstream() as base_url:
        address = base_url.split("://")[1].removesuffix("/v1")
        gateway, _ = await start(make_gateway, base_url, transport=transport, **provider)
        async with AsyncAIClient(target=f"127.0.0.1:{gateway.port}", plaintext=True) as client:
            seen, error = await stream_error(client)

    message = says.format(address=address)
    assert seen == []
    assert (error.code, error.reason, error.message) == (code, reason, message)
    assert (error.metadata["cause"], error.metadata["upstream_address"]) == (cause, address)
    assert attempts_logged(logs)[0] == f"attempt 1 of dead-model on dead/gpt-test failed ({reason}): {message}"
    assert UPSTREAM_KEY not in logs.text + repr(error.metadata) + error.message
