"""SIGTERM during load: every stream that fits in the grace period completes, and the process exits in time."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import SAFETY_TIMEOUT_S, run_gateway
from tests.rpc import request

pytestmark = pytest.mark.slow

STREAMS = 20
PROMPT = "one two three four five six seven eight nine ten"  # ten deltas, 100 ms apart: about 0.9 s
GRACE_S = 300.0  # far more than the streams need: exiting before it ran out is exiting in time


Call = grpc.aio.UnaryStreamCall[pb.StreamGenerateRequest, pb.StreamChunk]


async def read_chunk(call: Call) -> pb.StreamChunk:
    chunk = await call.read()
    assert isinstance(chunk, pb.StreamChunk)
    return chunk


async def read_rest(call: Call) -> list[pb.StreamChunk]:
    """The chunks to the end of the call, which must end OK."""
    chunks = []
    while isinstance(chunk := await call.read(), pb.StreamChunk):
        chunks.append(chunk)
    assert await call.code() == grpc.StatusCode.OK
    return chunks


async def test_sigterm_under_load_loses_no_stream_that_fits_in_the_grace_period(
    tmp_path: Path, fake_openai: FakeOpenAIUpstream
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        f"grace_period_s: {GRACE_S}\n"
        "providers:\n"
        f"  - {{name: fake, kind: openai, base_url: '{fake_openai.base_url}', api_key_env: FAKE_KEY}}\n"
        "models:\n"
        "  - {name: slow, provider: fake, upstream_model: slow-tokens-100}\n"
    )
    async with run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            calls = [stub.StreamGenerate(request("slow", PROMPT), timeout=SAFETY_TIMEOUT_S) for _ in range(STREAMS)]
            firsts = await asyncio.gather(*(read_chunk(call) for call in calls))

            signalled = time.monotonic()
            gateway.send_signal(signal.SIGTERM)

            rests = await asyncio.gather(*(read_rest(call) for call in calls))
            for first, chunks in zip(firsts, rests, strict=True):
                whole = [first, *chunks]
                assert "".join(c.delta for c in whole) == PROMPT
                assert [c.is_complete for c in whole] == [False] * 10 + [True]
            assert await gateway.wait_exit() == 0
            assert time.monotonic() - signalled < GRACE_S

    assert "Traceback" not in gateway.stderr
