"""One access log line per call: who asked for what, who served it, how it ended, and no secret."""

from __future__ import annotations

import logging

import grpc
import pytest

from server.app import Gateway
from tests.conftest import CLIENT_TOKEN, UPSTREAM_KEY, GatewayFactory, client_auth, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
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
            await stub.Generate(unary_request("fault-401"), metadata=GOOD, timeout=5)
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
