"""Shadow traffic through a real `python -m server` process with two fake upstreams: the caller's answer,
timing and cost are the primary's alone (its call ends while the shadow's upstream is still held), the
shadow's own outcome, tokens, cost and text difference are counted exactly, a full slot drops the shadow,
and a shadow still running at shutdown is cancelled."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.metrics import scrape_port
from tests.process import GatewayProcess, run_gateway
from tests.rpc import collect_stream, request, unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`

_METRICS_ON = re.compile(r"metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics")
# One USD per token, so that costs are token counts.
PRICE = "{input: 1000000, output: 1000000}"


def write_config(tmp_path: Path, main: FakeOpenAIUpstream, side: FakeOpenAIUpstream) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "metrics: {listen: 127.0.0.1:0}\n"
        "retry: {max_attempts: 1}\n"
        "providers:\n"
        f"  - {{name: main, kind: openai, base_url: '{main.base_url}', api_key_env: FAKE_KEY}}\n"
        f"  - {{name: side, kind: openai, base_url: '{side.base_url}', api_key_env: FAKE_KEY}}\n"
        "models:\n"
        f"  - {{name: primary, provider: main, upstream_model: gpt-test, price: {PRICE},\n"
        "     shadow: {deployment: side/gpt-test, percent: 100, max_concurrent: 1}}\n"
        f"  - {{name: flaky, provider: main, upstream_model: gpt-test, price: {PRICE},\n"
        "     shadow: {deployment: side/fault-503, percent: 100}}\n"
        f"  - {{name: other, provider: main, upstream_model: gpt-test, price: {PRICE},\n"
        "     shadow: {model: tokens, percent: 100}}\n"
        f"  - {{name: tokens, provider: side, upstream_model: tokens-3, price: {PRICE}}}\n"
    )
    return config


@pytest.fixture
async def main() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        yield upstream


@pytest.fixture
async def side() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        yield upstream


def metrics_port(gateway: GatewayProcess) -> int:
    found = _METRICS_ON.search(gateway.stderr)
    assert found is not None, gateway.stderr
    return int(found["port"])


async def test_the_caller_gets_the_primarys_answer_while_its_shadow_is_held_and_both_are_counted_apart(
    tmp_path: Path, main: FakeOpenAIUpstream, side: FakeOpenAIUpstream
) -> None:
    config = write_config(tmp_path, main, side)
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            side.hold()
            streamed = await collect_stream(stub, request("primary", "hello brave world"))
            shadowed = await side.wait_for_requests(1)  # the shadow is in flight, held before its first token
            assert not side.disconnects
            answered = await stub.Generate(unary_request("primary", "one two"))  # the one slot is taken: dropped
            side.release()
            await gateway.wait_for_lines(r"shadow model=primary .*outcome=ok")
            failed_shadow = await collect_stream(stub, request("flaky", "a b"))
            other = await collect_stream(stub, request("other", "x y z"))
            lines = await gateway.wait_for_lines(r"shadow model=(flaky|other) ", count=2)
        scrape = await scrape_port(metrics_port(gateway))

    # The callers: the primary's answers, costs and nothing else.
    assert streamed.error is None
    assert "".join(streamed.deltas) == "hello brave world"
    assert [f.usage.cost_usd for f in streamed.finals] == [6.0]  # 3 + 3 tokens at 1 USD: no shadow in it
    assert answered.content == "one two"
    assert answered.usage.cost_usd == 4.0
    assert failed_shadow.error is None
    assert "".join(failed_shadow.deltas) == "a b"
    assert other.error is None
    assert shadowed.model == "gpt-test"
    assert shadowed.headers["x-request-id"].endswith(".shadow")
    assert [r.model for r in main.requests] == ["gpt-test"] * 4
    assert sorted(str(r.model) for r in side.requests) == ["fault-503", "gpt-test", "tokens-3"]
    assert scrape.value("gateway_cost_usd_total") == 6.0 + 4.0 + 4.0 + 6.0

    # The shadows, apart.
    assert "outcome=error reason=UPSTREAM_UNAVAILABLE" in next(line for line in lines if "model=flaky" in line)
    assert "difference=1.000" in next(line for line in lines if "model=other" in line)
    calls = "gateway_shadow_calls_total"
    assert scrape.value(calls) == 3
    assert scrape.value(calls, gen_ai_request_model="primary", deployment="side/gpt-test", outcome="ok") == 1
    assert scrape.value(calls, gen_ai_request_model="flaky", outcome="error", error_type="UPSTREAM_UNAVAILABLE") == 1
    assert scrape.value(calls, gen_ai_request_model="other", deployment="tokens-3", outcome="ok") == 0
    assert scrape.value(calls, gen_ai_request_model="other", deployment="side/tokens-3", outcome="ok") == 1
    assert scrape.value("gateway_shadow_dropped_total", gen_ai_request_model="primary") == 1
    assert scrape.value("gateway_shadow_tokens_total", gen_ai_request_model="primary", gen_ai_token_type="input") == 3
    assert scrape.value("gateway_shadow_tokens_total", gen_ai_request_model="primary", gen_ai_token_type="output") == 3
    assert scrape.value("gateway_shadow_cost_usd_total", gen_ai_request_model="primary") == 6.0
    assert scrape.value("gateway_shadow_cost_usd_total") == 6.0 + 3.0 + 3.0  # other: 3 prompt + 3 "t0 t1 t2"
    assert scrape.value("gateway_shadow_text_difference_count") == 2  # flaky's failed: nothing to compare
    assert scrape.value("gateway_shadow_text_difference_sum", gen_ai_request_model="primary") == 0.0
    assert scrape.value("gateway_shadow_text_difference_sum", gen_ai_request_model="other") == 1.0
    assert scrape.value("gateway_shadow_time_to_first_token_seconds_count") == 2
    assert scrape.value("gateway_shadow_duration_seconds_count") == 3


async def test_a_shadow_still_running_at_shutdown_is_cancelled_and_its_upstream_closed(
    tmp_path: Path, main: FakeOpenAIUpstream, side: FakeOpenAIUpstream
) -> None:
    config = write_config(tmp_path, main, side)
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            side.hold()
            outcome = await collect_stream(pb_grpc.AIServiceStub(channel), request("primary"))
            await side.wait_for_requests(1)
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0
        await side.wait_for_disconnect(model="gpt-test")

    assert outcome.error is None
    [line] = [line for line in gateway.stderr.splitlines() if "shadow model=" in line]
    assert "outcome=cancelled" in line
    assert "Traceback" not in gateway.stderr
