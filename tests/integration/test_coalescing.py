"""Deltas that reach the gateway together leave it as one chunk; a client that keeps up gets one per token.

Through a real gateway in front of each provider's byte-exact fake: the echo's pieces written in one
write reach the client as fewer chunks whose text is exactly the reply; pieces let go one at a time (the
fake's `pace`/`step`, each step once the client has the chunk before it) reach it one chunk each. Usage,
the final chunk and the gateway's own count of the deltas it relayed are the same either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.types import Usage
from tests.conftest import UPSTREAM_KEY, GatewayFactory
from tests.integration.test_conformance import FAKES, PROVIDERS, Upstream, assert_final, conformance_config
from tests.rpc import collect_stream, error_info, request, stub_for

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
