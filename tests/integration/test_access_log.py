"""One access log line per call: who asked for what, who served it, how it ended, and no secret."""

from __future__ import annotations

import logging

import grpc
import pytest

from server.app import Gateway
from tests.conftest import CLIENT_TOKEN, UPSTREAM_KEY, GatewayFactory, client_auth, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi
from tests.rpc import collect_stream, request, stub_for, unary_request

GOOD = (("authorization", f"Bearer {CLIENT_TOKEN}"),)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    return await make_gateway(openai_config(fake_openai.base_url, auth=client_auth()))


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server.access"]


async def test_a_stream_logs_its_client_model_server_ttft_and_tokens(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("gpt-test", "one two three"), metadata=GOOD)
    assert outcome.error is None
    [line] = access_lines(caplog)
    assert line.startswith("StreamGenerate client=test-client model=gpt-test served=fake-openai:fake-openai/gpt-test")
    assert " code=OK " in line
    assert " deltas=3 tokens=3/3 " in line
    ttft = line.split(" ttft_ms=")[1].split(" ")[0]
    assert float(ttft) > 0


async def test_a_failed_call_logs_its_code_and_reason_and_no_secret(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(unary_request("fault-401"), metadata=GOOD, timeout=30)
        outcome = await collect_stream(stub, request("fault-reset-mid"), metadata=GOOD)
    assert outcome.error is not None
    unary, streamed = access_lines(caplog)
    assert "Generate client=test-client model=fault-401" in unary
    assert " code=INTERNAL reason=UPSTREAM_AUTH_FAILED " in unary
    assert " code=UNAVAILABLE reason=UPSTREAM_STREAM_INTERRUPTED " in streamed
    assert " deltas=2 " in streamed
    for line in (unary, streamed):
        assert CLIENT_TOKEN not in line
        assert UPSTREAM_KEY not in line


async def test_every_interactive_turn_logs_its_model_usage_and_cost_and_the_session_counts_them(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub, metadata=GOOD)
        started = await bidi.start("gpt-test")
        await bidi.turn("r1", "one two three")
        await bidi.until_end_of("r1")
        await bidi.turn("r2", "four", model="fault-401")
        await bidi.until_end_of("r2")
        assert (await bidi.finish()).code == grpc.StatusCode.OK
    first, second, session = access_lines(caplog)
    prefix = f"InteractiveStream.turn client=test-client session={started.session_id}"
    assert first.startswith(
        f"{prefix} turn_request_id=r1 model=gpt-test served=fake-openai:fake-openai/gpt-test code=OK "
    )
    assert " deltas=3 tokens=" in first
    assert second.startswith(f"{prefix} turn_request_id=r2 model=fault-401 ")
    assert " code=INTERNAL reason=UPSTREAM_AUTH_FAILED " in second
    assert session.startswith(f"InteractiveStream client=test-client session={started.session_id} model=- ")
    assert session.endswith(" turns=2")


async def test_a_call_without_a_valid_token_is_logged_with_no_client(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(unary_request("gpt-test"), metadata=(("authorization", "Bearer wrong"),), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [line] = access_lines(caplog)
    assert line.startswith("Generate client=- model=- served=- code=UNAUTHENTICATED reason=UNAUTHENTICATED ")
    assert "wrong" not in line


async def test_a_client_chosen_model_name_cannot_forge_or_split_a_log_line(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    forged = "x code=OK\nStreamGenerate client=admin " + "y" * 500
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(unary_request(forged), metadata=GOOD, timeout=30)
    [line] = access_lines(caplog)
    assert "\n" not in line
    assert " model=x\\x20code=OK\\x0aStreamGenerate\\x20client=admin\\x20yyy" in line
    assert "y" * 200 not in line  # cut, and marked
    assert "…" in line
    assert " code=INVALID_ARGUMENT reason=INVALID_REQUEST " in line  # a name over 256 characters
