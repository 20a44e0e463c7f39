"""Health per model through a real `python -m server` process whose fake upstream fails: the breaker opens,
the model turns NOT_SERVING (a model with a healthy fallback does not), and serves again after the cooldown.
The test waits on Watch events, never on the clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from generated import ai_service_pb2_grpc as pb_grpc
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import SAFETY_TIMEOUT_S, health_check, health_watch, run_gateway
from tests.rpc import collect_stream, error_info, request

pytestmark = pytest.mark.slow  # starts `python -m server`

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


def write_config(
    tmp_path: Path, fake: FakeOpenAIUpstream, *, upstream_model: str, cooldown_s: float, first_token_s: float = 120
) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "retry: {max_attempts: 1}\n"
        f"circuit_breaker: {{consecutive_failures: 1, cooldown_s: {cooldown_s}}}\n"
        "providers:\n"
        f"  - {{name: fake, kind: openai, base_url: '{fake.base_url}', api_key_env: FAKE_KEY,"
        f" first_token_timeout_s: {first_token_s}}}\n"
        "  - {name: demo, kind: demo}\n"
        "models:\n"
        f"  - {{name: lonely, provider: fake, upstream_model: {upstream_model}, aliases: [solo]}}\n"
        f"  - {{name: guarded, provider: fake, upstream_model: {upstream_model}, fallbacks: [demo]}}\n"
        "  - {name: demo, provider: demo}\n"
    )
    return config


def service(model: str) -> HealthCheckRequest:
    return HealthCheckRequest(service=f"holysheepai.AIService/{model}")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        yield upstream


async def test_a_model_whose_every_circuit_is_open_is_not_serving_and_one_with_a_fallback_serves(
    tmp_path: Path, fake: FakeOpenAIUpstream
) -> None:
    config = write_config(tmp_path, fake, upstream_model="fault-503", cooldown_s=3600)
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            check = health_check(channel)
            watch = aiter(health_watch(channel)(service("lonely"), timeout=SAFETY_TIMEOUT_S))
            assert (await anext(watch)).status == SERVING
            failed = await collect_stream(pb_grpc.AIServiceStub(channel), request("lonely"))
            assert (await anext(watch)).status == NOT_SERVING
            statuses = {
                name: (await check(service(name), timeout=SAFETY_TIMEOUT_S)).status
                for name in ("lonely", "solo", "guarded", "demo")
            }
            whole = await check(HealthCheckRequest(service=""), timeout=SAFETY_TIMEOUT_S)
            refused = await collect_stream(pb_grpc.AIServiceStub(channel), request("lonely"))
            served = await collect_stream(pb_grpc.AIServiceStub(channel), request("guarded"))

    assert failed.error is not None
    assert error_info(failed.error).reason == "UPSTREAM_UNAVAILABLE"
    assert statuses == {"lonely": NOT_SERVING, "solo": NOT_SERVING, "guarded": SERVING, "demo": SERVING}
    assert whole.status == SERVING
    assert refused.error is not None
    assert error_info(refused.error).reason == "CIRCUIT_OPEN"
    assert served.error is None
    assert [f.model for f in served.finals] == ["demo"]


async def test_after_the_cooldown_the_model_serves_again_a_failed_probe_closes_it_and_a_good_one_keeps_it(
    tmp_path: Path, fake: FakeOpenAIUpstream
) -> None:
    # A held reply fails at the first-token timeout; it is long enough for a loaded machine to answer the
    # released one in time, and the cooldown short: the test waits on Watch events either way.
    config = write_config(tmp_path, fake, upstream_model="gpt-test", cooldown_s=0.5, first_token_s=3)
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            watch = aiter(health_watch(channel)(service("lonely"), timeout=SAFETY_TIMEOUT_S))
            assert (await anext(watch)).status == SERVING
            fake.hold()  # no first token: each call fails after the provider's first_token_timeout_s
            first = await collect_stream(stub, request("lonely"))
            assert (await anext(watch)).status == NOT_SERVING
            assert (await anext(watch)).status == SERVING  # the cooldown is over: a call would be the probe
            probe = await collect_stream(stub, request("lonely"))
            assert (await anext(watch)).status == NOT_SERVING  # the probe failed: open for another cooldown
            assert (await anext(watch)).status == SERVING
            fake.release()
            recovered = await collect_stream(stub, request("lonely"))
            after = await health_check(channel)(service("lonely"), timeout=SAFETY_TIMEOUT_S)

    for failed in (first, probe):
        assert failed.error is not None
        assert error_info(failed.error).reason == "UPSTREAM_STREAM_IDLE"
    assert recovered.error is None
    assert "".join(recovered.deltas) == "hello brave world"
    assert after.status == SERVING
    assert "circuit of fake/gpt-test closed: its probe succeeded" in gateway.stderr
