"""A burst of simultaneous calls: every call gets the gateway's own answer, over its limit GATEWAY_OVERLOADED
with ErrorInfo, and none a bare CANCELLED (issue 11, item 5). gRPC's default queue of calls not yet taken by
the event loop cancelled calls from 1,000 waiting on, before the gateway saw them."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import SAFETY_TIMEOUT_S, run_gateway
from tests.rpc import error_info, unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`

BURST = 3000  # with gRPC's default queue about a fifth of these were cancelled before the gateway saw them
HELD = 50  # limits.max_concurrent_upstream: the calls that reach the (held) upstream

Outcome = str | tuple[str, str | None]


def config_file(tmp_path: Path, upstream: FakeOpenAIUpstream) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        f"limits: {{max_concurrent_upstream: {HELD}}}\n"
        "retry: {max_attempts: 1}\n"
        "providers:\n"
        f"  - {{name: fake, kind: openai, base_url: '{upstream.base_url}', api_key_env: FAKE_KEY}}\n"
        "models: [{name: gpt-test, provider: fake}]\n"
    )
    return path


async def outcome(stub: pb_grpc.AIServiceAsyncStub) -> Outcome:
    try:
        await stub.Generate(unary_request("gpt-test", "hi"), timeout=SAFETY_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        info = error_info(error) if error.trailing_metadata() else None
        return (error.code().name, info.reason if info else None)
    return "OK"


async def burst(address: str, upstream: FakeOpenAIUpstream) -> Counter[Outcome]:
    """BURST calls at once on one connection; the upstream answers once every call without a slot has its
    answer."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AIServiceStub(channel)
        await stub.ListModels(pb.ListModelsRequest(), timeout=SAFETY_TIMEOUT_S)  # connected: only calls burst
        calls = [asyncio.ensure_future(outcome(stub)) for _ in range(BURST)]
        async with asyncio.timeout(SAFETY_TIMEOUT_S):
            await upstream.wait_for_requests(HELD)
            waiting = set(calls)
            while len(waiting) > HELD:
                _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        upstream.release()
        return Counter(await asyncio.gather(*calls))


async def test_every_call_of_a_burst_gets_the_gateways_answer_and_none_a_bare_cancelled(
    tmp_path: Path, fake_openai: FakeOpenAIUpstream
) -> None:
    fake_openai.hold()  # the calls that get a slot keep it until the burst has been answered
    config = config_file(tmp_path, fake_openai)
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        outcomes = await burst(await gateway.wait_ready(), fake_openai)

    assert outcomes == {"OK": HELD, ("RESOURCE_EXHAUSTED", "GATEWAY_OVERLOADED"): BURST - HELD}
    assert len(fake_openai.requests) == HELD
