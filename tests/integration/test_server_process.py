"""`python -m server` as a real process: what it serves, how it refuses to start, and how it drains on a signal."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.defaults import SHUTDOWN_ABORT_LEAD_S
from tests.certs import make_certs
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import SAFETY_TIMEOUT_S, GatewayProcess, health_check, health_watch, run_gateway
from tests.rpc import StreamOutcome, error_info, request

pytestmark = pytest.mark.slow  # every test here starts `python -m server`

M = TypeVar("M", bound=Message)

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
# Ten words: the fake upstream sends one delta per word, so `slow-tokens-MS` streams for about 9 * MS ms.
PROMPT = "one two three four five six seven eight nine ten"
STREAM_WORDS = PROMPT.split(" ")
# A grace period no drain in these tests comes near: exiting before it ran out is exiting without waiting for it.
LONG_GRACE_S = 300.0
# Streams that never end by themselves: the upstream's second word would come after an hour.
ENDLESS = "slow-tokens-3600000"


def drain_config(tmp_path: Path, upstream: FakeOpenAIUpstream, upstream_model: str, grace_s: float) -> Path:
    """A config serving model "slow" from the fake upstream on a port of the gateway's choosing, the key passed
    in the environment as FAKE_KEY."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        f"grace_period_s: {grace_s}\n"
        "providers:\n"
        f"  - {{name: fake, kind: openai, base_url: '{upstream.base_url}', api_key_env: FAKE_KEY}}\n"
        "models:\n"
        f"  - {{name: slow, provider: fake, upstream_model: {upstream_model}}}\n"
    )
    return path


async def read_rest(call: grpc.aio.UnaryStreamCall[pb.StreamGenerateRequest, pb.StreamChunk]) -> StreamOutcome:
    """Every chunk still to come on `call`, and the error it ends with, if any."""
    outcome = StreamOutcome()
    try:
        while isinstance(chunk := await call.read(), pb.StreamChunk):  # until grpc.aio.EOF
            outcome.chunks.append(chunk)
    except grpc.aio.AioRpcError as exc:
        outcome.error = exc
    return outcome


async def read_one(call: grpc.aio.UnaryStreamCall[Any, M], kind: type[M]) -> M:
    message = await call.read()
    assert isinstance(message, kind), f"expected a {kind.__name__}, got {message!r}"
    return message


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


async def assert_health_gone(channel: grpc.aio.Channel, address: str) -> None:
    """Health Check never answers SERVING again, and then fails UNAVAILABLE: the port is closed.

    In the instant between the two steps of the drain (report NOT_SERVING, then stop the server) a Check may
    still be answered NOT_SERVING, or be cancelled by the stop; after it, every Check is refused. Each Check
    is a round trip to the gateway, so the loop waits on the gateway, not on the clock. A Check that races the
    stop itself can also be left unanswered by gRPC until its own deadline (seen once in about 40 runs of the
    suite beside another): that is not SERVING either, and the next Check is refused.
    """
    check = health_check(channel)
    seen: list[object] = []
    while True:
        try:
            seen.append((await check(HealthCheckRequest(service=""), timeout=SAFETY_TIMEOUT_S)).status)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                break
            seen.append(exc.code())
        assert len(seen) < 10_000, f"health never refused after the signal; saw {set(seen)}"
    assert set(seen) <= {NOT_SERVING, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port_of(address))


# --- starting ---------------------------------------------------------------------------------------------


async def test_without_a_config_it_serves_the_demo_on_the_listen_flag() -> None:
    async with run_gateway("--listen", "127.0.0.1:0") as gateway:
        address = await gateway.wait_ready()
        assert address.startswith("127.0.0.1:")
        assert port_of(address) != 0
        assert f"listening on {address} (plaintext, no auth); models: demo" in gateway.stderr
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.AIServiceStub(channel).StreamGenerate(
                request("demo", "hello brave world"), timeout=SAFETY_TIMEOUT_S
            )
            outcome = await read_rest(call)

    assert outcome.error is None
    assert outcome.deltas == ["hello", " brave", " world"]
    (final,) = outcome.finals
    assert final == outcome.chunks[-1]
    assert (final.model, final.provider, final.finish_reason) == ("demo", "demo", pb.FINISH_REASON_STOP)
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (3, 3)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
async def test_listening_beyond_loopback_without_auth_exits_2_and_says_why(host: str) -> None:
    gateway = await GatewayProcess.start("--listen", f"{host}:0")

    assert await gateway.wait_exit() == 2
    assert gateway.stderr.splitlines() == [
        "gateway: invalid configuration:",
        f"listen: refusing to serve without auth on non-loopback address {host.strip('[]')}; configure "
        "clients (or auth.tokens), or listen on 127.0.0.1",
    ]


async def test_an_invalid_config_file_exits_2_listing_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "colour: blue\n"
        "providers:\n"
        "  - {name: demo, kind: demo}\n"
        "  - {name: a, kind: telepathy}\n"
        "  - {name: o, kind: openai, base_url: ftp://x, api_key_env: NO_SUCH}\n"
        "models: [{name: demo, provider: demo}, {name: x, provider: nowhere}, {name: m}]\n"
    )
    gateway = await GatewayProcess.start("--config", str(config))

    assert await gateway.wait_exit() == 2
    assert gateway.stderr.splitlines() == [
        "gateway: invalid configuration:",
        "colour: unknown key (known: aliases, auth, circuit_breaker, client_defaults, clients, grace_period_s, "
        "interactive, keepalive, limits, listen, log, log_level, max_request_bytes, metrics, models, providers, "
        "retry, tls, workers)",
        "providers[1].kind: expected one of openai, anthropic, gemini, demo, got 'telepathy'",
        "providers[2].base_url: required, an http:// or https:// URL",
        "providers[2].api_key_env: environment variable NO_SUCH is not set or empty",
        "models[2].provider: required",
        "models: model 'x' names provider 'nowhere', which is not configured",
    ]


async def test_a_missing_tls_key_exits_2_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    files = make_certs(tmp_path / "certs")
    files.server_key.unlink()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "tls: {cert_file: certs/server.crt, key_file: certs/server.key}\n"
        "providers: [{name: demo, kind: demo}]\n"
        "models: [{name: demo, provider: demo}]\n"
    )
    gateway = await GatewayProcess.start("--config", str(config))

    assert await gateway.wait_exit() == 2
    assert gateway.stderr.splitlines() == [
        "gateway: invalid configuration:",
        f"tls.key_file: {files.server_key}: no such file",
    ]


async def test_a_yaml_syntax_error_exits_2_naming_the_file_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listen: 127.0.0.1:0\n  log_level: INFO\n")
    gateway = await GatewayProcess.start("--config", str(config))

    assert await gateway.wait_exit() == 2
    assert gateway.stderr.splitlines() == [
        "gateway: invalid configuration:",
        f"config file {config} is not valid YAML: line 2, column 12: mapping values are not allowed here",
    ]


async def test_a_port_in_use_exits_1_with_a_message_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        gateway = await GatewayProcess.start("--listen", address)

        assert await gateway.wait_exit() == 1

    assert f"gateway: cannot listen on {address}: " in gateway.stderr
    assert "Traceback" not in gateway.stderr


# --- stopping -------------------------------------------------------------------------------------------


async def test_sigterm_drains_in_flight_streams_and_refuses_new_calls(
    tmp_path: Path, fake_openai: FakeOpenAIUpstream
) -> None:
    config = drain_config(tmp_path, fake_openai, "slow-tokens-100", LONG_GRACE_S)
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            watch = health_watch(channel)(HealthCheckRequest(service=""))
            assert (await read_one(watch, HealthCheckResponse)).status == SERVING
            in_flight = stub.StreamGenerate(request("slow", PROMPT), timeout=SAFETY_TIMEOUT_S)
            first = await read_one(in_flight, pb.StreamChunk)

            signalled = time.monotonic()
            gateway.send_signal(signal.SIGTERM)

            # (a) Health turns NOT_SERVING for those watching, and the port closes: Check is refused.
            assert (await read_one(watch, HealthCheckResponse)).status == NOT_SERVING
            watch.cancel()  # a Watch is an in-flight call too: left open, it would hold the drain to the full grace
            await assert_health_gone(channel, address)
            # (b) A call started after the signal is refused, retryably.
            refused = await read_rest(stub.StreamGenerate(request("slow", PROMPT), timeout=SAFETY_TIMEOUT_S))
            assert refused.chunks == []
            assert refused.error is not None
            assert refused.error.code() == grpc.StatusCode.UNAVAILABLE
            # (c) The call in flight runs to its end: every delta, then one final chunk, then OK.
            rest = await read_rest(in_flight)
            assert rest.error is None
            assert await in_flight.code() == grpc.StatusCode.OK
            chunks = [first, *rest.chunks]
            assert [c.delta for c in chunks] == [STREAM_WORDS[0], *(f" {w}" for w in STREAM_WORDS[1:]), ""]
            assert [c.is_complete for c in chunks] == [False] * len(STREAM_WORDS) + [True]
            # (d) With nothing left in flight the process exits 0, without waiting for the rest of the grace period.
            assert await gateway.wait_exit() == 0
            assert time.monotonic() - signalled < LONG_GRACE_S

    assert "shutting down" in gateway.stderr
    assert "Traceback" not in gateway.stderr


async def test_a_stream_longer_than_the_grace_period_ends_unavailable_not_ok(
    tmp_path: Path, fake_openai: FakeOpenAIUpstream
) -> None:
    grace_s = 1.0
    config = drain_config(tmp_path, fake_openai, ENDLESS, grace_s)
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            in_flight = pb_grpc.AIServiceStub(channel).StreamGenerate(request("slow", PROMPT), timeout=SAFETY_TIMEOUT_S)
            first = await read_one(in_flight, pb.StreamChunk)

            # Taken before the signal: a lower bound on the gateway's own start of the grace period.
            signalled = time.monotonic()
            gateway.send_signal(signal.SIGTERM)
            rest = await read_rest(in_flight)
            cut_after = time.monotonic() - signalled

            assert first.delta == STREAM_WORDS[0]
            assert rest.error is not None
            assert rest.error.code() == grpc.StatusCode.UNAVAILABLE
            assert rest.finals == []
            assert rest.deltas == []  # the upstream sent nothing more: only the grace period ended the call
            # The gateway itself ends the call just before the grace period runs out, with details.
            info = error_info(rest.error)
            assert info.reason == "SHUTTING_DOWN"
            assert info.metadata["deltas_sent"] == "1"
            assert cut_after >= grace_s - SHUTDOWN_ABORT_LEAD_S  # the call had its grace period
            assert await gateway.wait_exit() == 0

    assert "Traceback" not in gateway.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_an_idle_gateway_stops_at_once_and_exits_0_on(sig: signal.Signals) -> None:
    grace = {"GATEWAY_GRACE_PERIOD_S": str(LONG_GRACE_S)}
    async with run_gateway("--listen", "127.0.0.1:0", env=grace) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            signalled = time.monotonic()
            gateway.send_signal(sig)

            await assert_health_gone(channel, address)
            assert await gateway.wait_exit() == 0
            assert time.monotonic() - signalled < LONG_GRACE_S  # nothing in flight: the grace is not waited for

    assert "Traceback" not in gateway.stderr  # SIGINT is a shutdown, not a KeyboardInterrupt
