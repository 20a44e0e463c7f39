"""Deltas that reach the gateway together leave it as one chunk; a client that keeps up gets one per token.

Through a real gateway in front of each provider's byte-exact fake: the echo's pieces written in one
write reach the client as fewer chunks whose text is exactly the reply; pieces let go one at a time (the
fake's `pace`/`step`, each step once the client has the chunk before it) reach it one chunk each. Usage,
the final chunk and the gateway's own count of the deltas it relayed are the same either way. An
InteractiveStream turn, which shares the path, does the same with its TurnDeltas.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.types import Usage
from tests.conftest import UPSTREAM_KEY, GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.integration.test_conformance import FAKES, PROVIDERS, Upstream, assert_final, conformance_config
from tests.interactive import Bidi
from tests.rpc import collect_stream, detail, error_info, request, stub_for

WORDS = ["one", " two", " three", " four", " five", " six", " seven", " eight"]
TEXT = "".join(WORDS)


@pytest.fixture(params=PROVIDERS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    async with FAKES[request.param](api_key=UPSTREAM_KEY) as fake:
        yield Upstream(request.param, fake)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await make_gateway(conformance_config(upstream.kind, upstream.fake.base_url))  # aiohttp, the default


async def test_pieces_written_together_reach_the_client_as_one_chunk(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("echo", TEXT))

    assert outcome.error is None
    assert outcome.deltas == [TEXT]  # the fake wrote the whole reply at once: one read, one chunk
    assert len(outcome.finals) == 1
    final = outcome.chunks[-1]
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert_final(final, upstream, Usage(8, 8, 16))


async def test_a_client_that_keeps_up_gets_one_chunk_per_piece(gateway: Gateway, upstream: Upstream) -> None:
    upstream.fake.pace()
    async with stub_for(gateway) as stub:
        call = stub.StreamGenerate(request("echo", TEXT), timeout=30)
        for word in WORDS:
            upstream.fake.step()
            chunk = await call.read()
            assert isinstance(chunk, pb.StreamChunk)
            assert (chunk.delta, chunk.is_complete) == (word, False)
        final = await call.read()
        assert isinstance(final, pb.StreamChunk)
        assert final.is_complete
        assert_final(final, upstream, Usage(8, 8, 16))
        assert await call.read() is grpc.aio.EOF


async def test_a_cut_stream_counts_every_piece_it_relayed_in_one_chunk(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("fault-reset-mid", "hello brave world"))

    assert outcome.deltas == ["hello brave"]  # both pieces came in one read
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(outcome.error)
    assert info.reason == "UPSTREAM_STREAM_INTERRUPTED"
    assert (info.metadata["deltas_sent"], info.metadata["partial_completion_tokens"]) == ("2", "2")


@pytest.fixture
async def openai_stub(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> AsyncIterator[pb_grpc.AIServiceAsyncStub]:
    async with stub_for(await make_gateway(openai_config(fake_openai.base_url))) as stub:
        yield stub


async def test_an_interactive_turn_joins_pieces_that_arrive_together(openai_stub: pb_grpc.AIServiceAsyncStub) -> None:
    bidi = Bidi(openai_stub)
    await bidi.start("gpt-test", mode=pb.SESSION_MODE_PIPELINE)
    await bidi.turn("1", TEXT)
    *deltas, done = await bidi.until_end_of("1")
    await bidi.turn("2", "hello brave world", model="fault-reset-mid")
    *cut, error = await bidi.until_end_of("2")
    await bidi.finish()

    assert [r.delta.text for r in deltas] == [TEXT]
    assert (done.done.usage.completion_tokens, done.done.usage.estimated) == (8, False)
    assert [r.delta.text for r in cut] == ["hello brave"]
    info = detail(error.error.status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert (info.reason, info.metadata["deltas_sent"]) == ("UPSTREAM_STREAM_INTERRUPTED", "2")


async def test_an_interactive_turn_that_keeps_up_gets_a_delta_per_piece(
    openai_stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    fake_openai.pace()
    bidi = Bidi(openai_stub)
    await bidi.start("gpt-test", mode=pb.SESSION_MODE_PIPELINE)
    await bidi.turn("1", TEXT)
    for word in WORDS:
        fake_openai.step()
        response = await bidi.read()
        assert (response.WhichOneof("kind"), response.delta.text) == ("delta", word)
    [done] = await bidi.until_end_of("1")
    await bidi.finish()

    assert done.done.usage.completion_tokens == 8
