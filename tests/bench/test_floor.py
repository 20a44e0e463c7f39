"""The floor (bench/floor.py) serves AIService from bytes made once: a StreamGenerate of tokens-N is N
deltas and a final chunk with usage, `hold` one delta and then nothing until the client cancels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from bench.floor import build_server
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc


@pytest.fixture
async def floor() -> AsyncIterator[pb_grpc.AIServiceAsyncStub]:
    server, port = build_server("127.0.0.1", 0)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.AIServiceStub(channel)
    await server.stop(None)


async def test_a_stream_of_tokens_n_is_n_deltas_then_the_final_chunk(floor: pb_grpc.AIServiceAsyncStub) -> None:
    chunks = [chunk async for chunk in floor.StreamGenerate(pb.StreamGenerateRequest(model="tokens-3"))]

    assert [chunk.delta for chunk in chunks] == ["t0", " t1", " t2", ""]
    assert [chunk.is_complete for chunk in chunks] == [False, False, False, True]
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_generate_answers_the_same_reply_at_once(floor: pb_grpc.AIServiceAsyncStub) -> None:
    reply = await floor.Generate(pb.GenerateRequest(model="tokens-3"))

    assert reply.content == "t0 t1 t2"
    assert reply.usage.completion_tokens == 3


async def test_hold_sends_one_delta_then_waits_until_cancelled(floor: pb_grpc.AIServiceAsyncStub) -> None:
    call = floor.StreamGenerate(pb.StreamGenerateRequest(model="hold"))
    first = await call.read()
    assert isinstance(first, pb.StreamChunk)
    assert first.delta == "t0"
    second = asyncio.ensure_future(call.read())
    await asyncio.sleep(0)  # the read is pending: nothing more comes
    assert not second.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert call.cancelled()


@pytest.mark.parametrize("model", ["gpt-4o", "tokens-0", "tokens-x"])
async def test_a_model_the_floor_does_not_serve_is_not_found(floor: pb_grpc.AIServiceAsyncStub, model: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in floor.StreamGenerate(pb.StreamGenerateRequest(model=model)):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
