"""Config numbers have their real range: a value gRPC cannot carry, `true` for a number or a request cap of 0
bytes stops `python -m server` with exit 2 and a message, never an OverflowError traceback (issue 11, item 7)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.process import GatewayProcess, run_gateway

pytestmark = pytest.mark.slow  # every test here starts `python -m server`

DEMO = "providers: [{name: demo, kind: demo}]\nmodels: [{name: demo, provider: demo}]\n"


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"listen: 127.0.0.1:0\n{text}{DEMO}")
    return path


async def test_numbers_beyond_what_grpc_carries_exit_2_with_a_message(tmp_path: Path) -> None:
    config = config_file(
        tmp_path,
        "max_request_bytes: 2147483648\n"
        "keepalive: {time_s: 2147484, timeout_s: 2592000, max_connection_age_s: 1e12}\n"
        "interactive: {max_in_flight: 3000000000}\n",
    )
    gateway = await GatewayProcess.start("--config", str(config))

    assert await gateway.wait_exit() == 2
    assert gateway.stderr.splitlines() == [
        "gateway: invalid configuration:",
        "max_request_bytes: must be at most 2147418111",
        "interactive.max_in_flight: must be at most 2147483647",
        "keepalive.max_connection_age_s: must be at most 2147483 (24.8 days)",
        "keepalive.time_s: must be at most 2147483 (24.8 days)",
        "keepalive.timeout_s: must be at most 2147483 (24.8 days)",
    ]


async def test_true_is_not_a_number_and_a_request_cap_of_zero_is_refused(tmp_path: Path) -> None:
    config = config_file(
        tmp_path,
        "max_request_bytes: 0\ngrace_period_s: true\n"
        "retry: {max_attempts: true}\nlimits: {max_concurrent_upstream: 2.5}\n",
    )
    gateway = await GatewayProcess.start("--config", str(config))

    assert await gateway.wait_exit() == 2
    assert gateway.stderr.splitlines() == [
        "gateway: invalid configuration:",
        "grace_period_s: expected a number, got true",
        "max_request_bytes: must be at least 1",
        "retry.max_attempts: expected a number, got true",
        "limits.max_concurrent_upstream: expected a whole number, got 2.5",
    ]


async def test_the_environment_overrides_have_the_same_ranges() -> None:
    gateway = await GatewayProcess.start(
        "--listen", "127.0.0.1:0", env={"GATEWAY_MAX_REQUEST_BYTES": "0", "GATEWAY_GRACE_PERIOD_S": "1e300"}
    )

    assert await gateway.wait_exit() == 2
    assert gateway.stderr.splitlines() == [
        "gateway: invalid configuration:",
        "GATEWAY_GRACE_PERIOD_S: must be at most 2147483 (24.8 days)",
        "GATEWAY_MAX_REQUEST_BYTES: must be at least 1",
    ]


async def test_the_largest_values_in_range_start_and_serve(tmp_path: Path) -> None:
    config = config_file(
        tmp_path,
        "max_request_bytes: 2147418111\n"
        "keepalive: {time_s: 2147483, timeout_s: 2147483, min_client_ping_interval_s: 2147483,"
        " max_connection_age_s: 2147483, max_connection_age_grace_s: 2147483}\n",
    )
    async with run_gateway("--config", str(config)) as gateway:
        await gateway.wait_ready()
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0
    assert "Traceback" not in gateway.stderr
