"""Limits shared across instances: two real `python -m server` processes on one real redis-server enforce
one global limit per client; with Redis gone, `backend_unavailable` decides, and no call hangs."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from tests.metrics import scrape_port
from tests.process import run_gateway
from tests.redis_server import run_redis
from tests.rpc import error_info, unary_request

pytestmark = pytest.mark.slow  # starts redis-server and `python -m server`

TOKEN = "team-token-0123456789"
_METRICS_ON = re.compile(r"metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics")
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def write_config(tmp_path: Path, name: str, backend: str, unavailable: str = "closed") -> Path:
    path = tmp_path / name
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        f"limits: {{backend: '{backend}', backend_unavailable: {unavailable}, backend_timeout_s: 0.2}}\n"
        "providers:\n"
        "  - {name: demo, kind: demo}\n"
        "models:\n"
        "  - {name: demo, provider: demo}\n"
        "clients:\n"
        "  - name: team\n"
        "    tokens: [{env: TEAM_TOKEN}]\n"
        "    models: [demo]\n"
        "    limits: {requests_per_minute: 2}\n"  # a refill every 30 s: never within a test's few seconds
    )
    return path


async def outcome(stub: pb_grpc.AIServiceAsyncStub) -> str:
    try:
        await stub.Generate(unary_request("demo"), metadata=AUTH, timeout=30)
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name} {error_info(error).reason}"
    return "OK"


async def test_two_gateways_on_one_redis_enforce_one_limit(tmp_path: Path) -> None:
    env = {"TEAM_TOKEN": TOKEN}
    async with run_redis(tmp_path) as redis:
        config = write_config(tmp_path, "gateway.yaml", redis.url)
        async with (
            run_gateway("--config", str(config), env=env) as first,
            run_gateway("--config", str(config), env=env) as second,
        ):
            addresses = [await first.wait_ready(), await second.wait_ready()]
            async with (
                grpc.aio.insecure_channel(addresses[0]) as one,
                grpc.aio.insecure_channel(addresses[1]) as other,
            ):
                stubs = [pb_grpc.AIServiceStub(one), pb_grpc.AIServiceStub(other)]
                outcomes = [await outcome(stubs[i % 2]) for i in range(6)]

    # Two requests a minute for the team, whichever instance each one reached.
    assert outcomes == ["OK"] * 2 + ["RESOURCE_EXHAUSTED QUOTA_EXCEEDED"] * 4


@pytest.mark.parametrize(
    ("unavailable", "expected", "workers"),
    [
        ("closed", "UNAVAILABLE LIMITS_UNAVAILABLE", "1"),
        ("open", "OK", "1"),
        # With workers the supervisor serves the workers' multiprocess files: the count is a real counter.
        ("closed", "UNAVAILABLE LIMITS_UNAVAILABLE", "2"),
    ],
)
async def test_without_redis_the_configured_choice_decides_and_nothing_hangs(
    tmp_path: Path, unavailable: str, expected: str, workers: str
) -> None:
    async with run_redis(tmp_path) as redis:
        url = redis.url  # a port that nothing listens on once this redis is gone
    config = write_config(tmp_path, "gateway.yaml", url, unavailable)
    async with run_gateway("--config", str(config), "--workers", workers, env={"TEAM_TOKEN": TOKEN}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            outcomes = [await outcome(pb_grpc.AIServiceStub(channel)) for _ in range(5)]
        found = _METRICS_ON.search(gateway.stderr)
        assert found is not None, gateway.stderr
        scrape = await scrape_port(int(found["port"]))

    assert outcomes == [expected] * 5  # fail-open: not limited to 2 a minute either
    counted = "served" if unavailable == "open" else "refused"
    assert scrape.value("gateway_limits_store_unavailable_total", outcome=counted) == 5
    assert f"limits store 127.0.0.1:{url.split(':')[2].split('/')[0]} unavailable" in gateway.stderr
    # Said once per outage, not once per call (by each worker that met it).
    assert 1 <= gateway.stderr.count("unavailable (") <= int(workers)
