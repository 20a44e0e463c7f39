"""A real `python -m server` after a burst of upstream calls: the idle connections it keeps to an upstream
are capped (128 per provider), through either transport, instead of staying open until they expire."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from server.defaults import POOL_MAX_IDLE_CONNECTIONS
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import run_gateway
from tests.rpc import collect_stream, request

pytestmark = pytest.mark.asyncio

BURST = POOL_MAX_IDLE_CONNECTIONS + 24
# Far less than the 30 s keep-alive expiry that would close the surplus without the cap; only a safety net.
CLOSE_TIMEOUT_S = 20.0


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_after_a_burst_at_most_128_idle_upstream_connections_stay_open(tmp_path: Path, transport: str) -> None:
    async with FakeOpenAIUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            "listen: 127.0.0.1:0\n"
            "providers:\n"
            f"  - {{name: up, kind: openai, base_url: '{upstream.base_url}', transport: {transport}}}\n"
            "models:\n"
            "  - {name: m, provider: up, upstream_model: echo}\n"
        )
        async with run_gateway("--config", str(config)) as gateway:
            address = await gateway.wait_ready()
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.AIServiceStub(channel)
                upstream.hold()  # every call holds its own connection until the whole burst has arrived
                calls = [
                    asyncio.ensure_future(collect_stream(stub, request("m", "a b"), timeout=60.0)) for _ in range(BURST)
                ]
                await upstream.wait_for_requests(BURST)
                assert upstream.open_connections == BURST
                upstream.release()
                outcomes = await asyncio.gather(*calls)
            assert [(o.error, "".join(o.deltas)) for o in outcomes] == [(None, "a b")] * BURST
            await upstream.wait_for_open_connections_at_most(POOL_MAX_IDLE_CONNECTIONS, CLOSE_TIMEOUT_S)
            assert upstream.connections_accepted == BURST
