"""`python -m server --workers 2`: a supervisor and two worker processes on one port, as real processes.

Which worker accepted which connection is read from /proc (tests/procnet.py): each test's channels use a
subchannel pool of their own, so that each channel is one TCP connection, accepted by one worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.workers import RestartPolicy
from tests.certs import make_certs
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.metrics import Scrape, scrape_port
from tests.process import SAFETY_TIMEOUT_S, GatewayProcess, run_gateway, wait_for_exit_of
from tests.procnet import sockets_of
from tests.rpc import StreamOutcome, request, unary_request

pytestmark = pytest.mark.slow  # every test here starts `python -m server` and its workers

PROMPT = "one two three four five six seven eight nine ten"
# Enough connections that both workers get some: the kernel spreads them by a hash of each connection's
# address, so all of them landing on one worker has a chance of 2 in 2 ** CHANNELS.
CHANNELS = 24
_STARTED = re.compile(r"started worker (?P<slot>\d+) \(pid (?P<pid>\d+)\)")
_METRICS_ON = re.compile(r"metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics")


def fake_config(tmp_path: Path, upstream: FakeOpenAIUpstream, *extra: str) -> Path:
    """Models `echo` (the fake's echo) and `down` (503 every time) from the fake upstream, port 0."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "\n".join(
            [
                "listen: 127.0.0.1:0",
                "providers:",
                f"  - {{name: fake, kind: openai, base_url: '{upstream.base_url}', api_key_env: FAKE_KEY}}",
                "models:",
                "  - {name: echo, provider: fake, upstream_model: gpt-test}",
                "  - {name: down, provider: fake, upstream_model: fault-503}",
                *extra,
            ]
        )
        + "\n"
    )
    return path


def worker_pids(gateway: GatewayProcess) -> dict[int, int]:
    """Slot -> pid of the worker that fills it now, from the supervisor's `started worker` lines."""
    return {int(m["slot"]): int(m["pid"]) for m in _STARTED.finditer(gateway.stderr)}


def metrics_port(gateway: GatewayProcess) -> int:
    found = _METRICS_ON.search(gateway.stderr)
    assert found is not None, gateway.stderr
    return int(found["port"])


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as fake:
        yield fake


async def open_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    # A subchannel pool per channel: otherwise channels to the same address share one TCP connection.
    return [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


async def held_streams(
    channels: list[grpc.aio.Channel], upstream: FakeOpenAIUpstream
) -> list[grpc.aio.UnaryStreamCall[pb.StreamGenerateRequest, pb.StreamChunk]]:
    """A stream of `echo` on each channel, each waiting at the upstream before its first token until
    `upstream.release()`."""
    upstream.hold()
    calls = [
        pb_grpc.AIServiceStub(channel).StreamGenerate(request("echo", PROMPT), timeout=SAFETY_TIMEOUT_S)
        for channel in channels
    ]
    await upstream.wait_for_requests(len(channels))
    return calls


async def close_all(channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(channel.close() for channel in channels))


async def read_rest(call: grpc.aio.UnaryStreamCall[pb.StreamGenerateRequest, pb.StreamChunk]) -> StreamOutcome:
    outcome = StreamOutcome()
    try:
        while isinstance(chunk := await call.read(), pb.StreamChunk):
            outcome.chunks.append(chunk)
    except grpc.aio.AioRpcError as exc:
        outcome.error = exc
    return outcome


def in_flight(scrape: Scrape) -> float:
    return scrape.value("gateway_calls_in_flight")


# --- metrics ----------------------------------------------------------------------------------------------


async def test_calls_spread_over_two_workers_are_each_counted_once_on_one_endpoint() -> None:
    env = {"GATEWAY_METRICS_LISTEN": "127.0.0.1:0"}
    async with run_gateway("--listen", "127.0.0.1:0", "--workers", "2", env=env) as gateway:
        address = await gateway.wait_ready()
        channels = await open_channels(address, CHANNELS)
        try:
            for channel in channels:
                await pb_grpc.AIServiceStub(channel).Generate(unary_request("demo"), timeout=SAFETY_TIMEOUT_S)
            held = sockets_of(port_of(address), worker_pids(gateway).values())
            scrape = await scrape_port(metrics_port(gateway))
        finally:
            await close_all(channels)

    assert f"listening on {address} (plaintext, no auth, 2 workers); models: demo" in gateway.stderr
    assert gateway.stderr.count("listening on ") == 1
    # Both workers served some of the calls: one connection (and call) per channel.
    assert sorted(h.listening for h in held.values()) == [True, True]
    assert sum(h.established for h in held.values()) == CHANNELS
    assert all(h.established >= 1 for h in held.values()), held
    # One scrape of the supervisor's endpoint counts every call exactly once, whichever worker served it.
    assert scrape.value("grpc_server_started_total", grpc_method="Generate") == CHANNELS
    assert scrape.value("grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") == CHANNELS
    assert scrape.value("grpc_server_handling_seconds_count", grpc_method="Generate") == CHANNELS
    assert scrape.value("grpc_server_msg_sent_total", grpc_method="Generate") == CHANNELS
    assert scrape.value("gateway_calls_total", grpc_method="Generate", code="OK") == CHANNELS
    assert scrape.value("gen_ai_client_token_usage_count", gen_ai_token_type="input") == CHANNELS
    assert scrape.value("gateway_tokens_total", gen_ai_token_type="output") == 3 * CHANNELS
    # Gauges are one sample per label set (the sum over the live workers), not one per worker.
    assert sorted(s.labels["grpc_method"] for s in scrape.matching("gateway_calls_in_flight")) == [
        "Generate",
        "InteractiveStream.turn",
        "StreamGenerate",
    ]
    assert in_flight(scrape) == 0
    assert scrape.value("gateway_interactive_sessions") == 0


async def test_breaker_gauges_count_the_workers_whose_breaker_is_open(
    tmp_path: Path, upstream: FakeOpenAIUpstream
) -> None:
    config = fake_config(tmp_path, upstream, "circuit_breaker: {consecutive_failures: 1}", "retry: {max_attempts: 1}")
    env = {"GATEWAY_METRICS_LISTEN": "127.0.0.1:0", "FAKE_KEY": UPSTREAM_KEY}
    async with run_gateway("--config", str(config), "--workers", "2", env=env) as gateway:
        address = await gateway.wait_ready()
        (channel,) = await open_channels(address, 1)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await pb_grpc.AIServiceStub(channel).Generate(unary_request("down"), timeout=SAFETY_TIMEOUT_S)
            held = sockets_of(port_of(address), worker_pids(gateway).values())
            scrape = await scrape_port(metrics_port(gateway))
            (served_by,) = [pid for pid, h in held.items() if h.established]
            slot = next(slot for slot, pid in worker_pids(gateway).items() if pid == served_by)
            mark = gateway.line_count
            os.kill(served_by, signal.SIGKILL)
            await gateway.wait_for_line(rf"worker {slot} \(pid {served_by}\) was killed by SIGKILL", after=mark)
            after_death = await scrape_port(metrics_port(gateway))
        finally:
            await channel.close()

    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    breaker = {"deployment": "fake/fault-503"}
    # The worker that served the call opened its breaker; the other never called that deployment.
    assert scrape.value("gateway_circuit_breaker_state", state="open", **breaker) == 1
    assert scrape.value("gateway_circuit_breaker_state", state="closed", **breaker) == 0
    assert scrape.value("gateway_retry_budget_balance", gen_ai_provider_name="fake") == 10  # the reserve
    assert scrape.value("gateway_upstream_attempts_total", outcome="unavailable") == 1
    # Once that worker is dead its breaker is no one's: the live gauges leave the sum, the counters stay.
    assert not any(after_death.matching("gateway_circuit_breaker_state", **breaker))
    assert after_death.value("gateway_upstream_attempts_total", outcome="unavailable") == 1


# --- a worker dies ----------------------------------------------------------------------------------------


async def test_a_worker_killed_under_load_fails_only_its_own_calls_and_is_replaced(
    tmp_path: Path, upstream: FakeOpenAIUpstream
) -> None:
    env = {"GATEWAY_METRICS_LISTEN": "127.0.0.1:0", "FAKE_KEY": UPSTREAM_KEY}
    async with run_gateway("--config", str(fake_config(tmp_path, upstream)), "--workers", "2", env=env) as gateway:
        address = await gateway.wait_ready()
        port, pids = port_of(address), worker_pids(gateway)
        channels = await open_channels(address, CHANNELS)
        try:
            calls = await held_streams(channels, upstream)
            held = sockets_of(port, pids.values())
            on_killed, on_survivor = held[pids[1]].established, held[pids[2]].established
            assert (on_killed + on_survivor, min(on_killed, on_survivor) >= 1) == (CHANNELS, True), held
            mark = gateway.line_count
            os.kill(pids[1], signal.SIGKILL)
            await gateway.wait_for_line(rf"worker 1 \(pid {pids[1]}\) was killed by SIGKILL: starting a new one")
            upstream.release()
            outcomes = await asyncio.gather(*(read_rest(call) for call in calls))
            await upstream.wait_for_disconnect(count=on_killed)  # the fake sees them go in its own time
            ready = await gateway.wait_for_line(r"worker 1 \(pid (?P<pid>\d+)\) ready", after=mark)
            replacement = int(ready["pid"])
            listening = sockets_of(port, [replacement])[replacement].listening
            # New connections go to both workers again, and every call on them succeeds.
            fresh = await open_channels(address, CHANNELS)
            try:
                answers = [
                    await pb_grpc.AIServiceStub(channel).Generate(unary_request("echo"), timeout=SAFETY_TIMEOUT_S)
                    for channel in fresh
                ]
                served_by_replacement = sockets_of(port, [replacement])[replacement].established
            finally:
                await close_all(fresh)
            scrape = await scrape_port(metrics_port(gateway))
        finally:
            await close_all(channels)

    failed = [o for o in outcomes if o.error is not None]
    succeeded = [o for o in outcomes if o.error is None]
    # Exactly the calls on the killed worker failed, each with UNAVAILABLE and nothing of the answer ...
    assert len(failed) == on_killed
    assert {o.error.code() for o in failed if o.error is not None} == {grpc.StatusCode.UNAVAILABLE}
    assert all(o.chunks == [] for o in failed)
    # ... and the others were not touched: the whole answer, then OK.
    assert len(succeeded) == on_survivor
    assert all("".join(o.deltas) == PROMPT and len(o.finals) == 1 for o in succeeded)
    # The upstream saw the killed worker's requests go away, and only those.
    assert len(upstream.disconnects) == on_killed
    # A new worker took slot 1, listens on the port and serves.
    assert replacement not in pids.values()
    assert listening
    assert served_by_replacement >= 1
    assert all(answer.content == "hello brave world" for answer in answers)
    # Counters keep what the dead worker counted; its calls in flight left the gauge with it.
    assert scrape.value("grpc_server_handled_total", grpc_method="StreamGenerate", grpc_code="OK") == on_survivor
    assert scrape.value("grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") == CHANNELS
    assert in_flight(scrape) == 0
    assert gateway.stderr.count("listening on ") == 1


async def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up_and_exit_1(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: 127.0.0.1:0\ntls: {{cert_file: {certs.server_cert}, key_file: {certs.server_key}}}\n"
        "providers: [{name: demo, kind: demo}]\nmodels: [{name: demo, provider: demo}]\n"
    )
    async with run_gateway("--config", str(config), "--workers", "2") as gateway:
        await gateway.wait_ready()
        pids = worker_pids(gateway)
        certs.server_key.unlink()  # a new worker cannot start any more
        os.kill(pids[1], signal.SIGKILL)
        # Six worker starts in a row, each of which may take long on a busy machine.
        code = await gateway.wait_exit(timeout=(RestartPolicy().max_quick_restarts + 2) * SAFETY_TIMEOUT_S)

    assert code == 1
    stderr = gateway.stderr
    assert f"worker 1 (pid {pids[1]}) was killed by SIGKILL: starting a new one" in stderr
    assert stderr.count("cannot listen on 127.0.0.1:") == 5  # each of the 5 replacements says why it died
    assert re.search(r"worker 1 \(pid \d+\) exited with code 1, its 6th death in a row .*giving up", stderr)
    assert f"worker 2 (pid {pids[2]}) stopped" in stderr
    assert "stopped, with errors" in stderr


async def test_workers_drain_by_themselves_when_the_supervisor_is_killed() -> None:
    async with run_gateway("--listen", "127.0.0.1:0", "--workers", "2") as gateway:
        await gateway.wait_ready()
        pids = worker_pids(gateway)
        gateway.send_signal(signal.SIGKILL)
        for pid in pids.values():
            await wait_for_exit_of(pid)
        for pid in pids.values():
            await gateway.wait_for_line(rf"worker \d \(pid {pid}\): the supervisor is gone; draining")


# --- stopping -----------------------------------------------------------------------------------------


async def test_sigterm_drains_every_worker_once_and_the_supervisor_exits_0(
    tmp_path: Path, upstream: FakeOpenAIUpstream
) -> None:
    env = {"FAKE_KEY": UPSTREAM_KEY}
    # A grace period no drain here comes near: the streams finish because they may, not because they are quick.
    config = fake_config(tmp_path, upstream, "grace_period_s: 300")
    async with run_gateway("--config", str(config), "--workers", "2", env=env) as gateway:
        address = await gateway.wait_ready()
        pids = worker_pids(gateway)
        channels = await open_channels(address, CHANNELS)
        try:
            calls = await held_streams(channels, upstream)
            mark = gateway.line_count
            gateway.send_signal(signal.SIGTERM)
            # Both workers are draining before the upstream answers.
            await gateway.wait_for_line("shutting down: in-flight calls have", after=mark, count=len(pids))
            upstream.release()
            outcomes = await asyncio.gather(*(read_rest(call) for call in calls))
            code = await gateway.wait_exit()
        finally:
            await close_all(channels)
        for pid in pids.values():
            await wait_for_exit_of(pid)

    assert code == 0
    assert all(o.error is None and "".join(o.deltas) == PROMPT for o in outcomes)
    for slot, pid in pids.items():
        assert f"worker {slot} (pid {pid}) stopped" in gateway.stderr
    assert gateway.stderr.count("shutting down: in-flight calls have") == 2
    assert "stopped: every worker drained" in gateway.stderr
    assert "starting a new one" not in gateway.stderr


# --- refusing to start --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (("--workers", "0"), {}, "--workers: expected a whole number from 1 to 256, or auto; got '0'"),
        (("--workers", "two"), {}, "--workers: expected a whole number from 1 to 256, or auto; got 'two'"),
        (
            (),
            {"GATEWAY_WORKERS": "1000"},
            "GATEWAY_WORKERS: expected a whole number from 1 to 256, or auto; got '1000'",
        ),
    ],
)
async def test_an_invalid_worker_count_exits_2_before_any_worker_starts(
    args: tuple[str, ...], env: dict[str, str], problem: str
) -> None:
    gateway = await GatewayProcess.start("--listen", "127.0.0.1:0", *args, env=env)
    try:
        assert await gateway.wait_exit() == 2
    finally:
        await gateway.kill()
    assert gateway.stderr.splitlines() == ["gateway: invalid configuration:", problem]


async def test_a_port_another_process_listens_on_exits_1_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = await GatewayProcess.start("--listen", f"127.0.0.1:{port}", "--workers", "2")
        try:
            assert await gateway.wait_exit() == 1
        finally:
            await gateway.kill()
    assert gateway.stderr.splitlines() == [f"gateway: cannot listen on 127.0.0.1:{port}: Address already in use"]
