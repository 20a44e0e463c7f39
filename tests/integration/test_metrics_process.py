"""`python -m server` with GATEWAY_METRICS_LISTEN: the real process serves /metrics beside gRPC."""

from __future__ import annotations

import re

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from tests.metrics import scrape_port
from tests.process import run_gateway
from tests.rpc import request, unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`

# server/app.py says where /metrics is, with the port the kernel chose, before its "listening on" line.
_METRICS_ON = re.compile(r"metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics")


async def test_a_gateway_process_counts_its_calls_on_its_metrics_listener() -> None:
    env = {"GATEWAY_METRICS_LISTEN": "127.0.0.1:0"}
    async with run_gateway("--listen", "127.0.0.1:0", env=env) as gateway:
        address = await gateway.wait_ready()
        found = _METRICS_ON.search(gateway.stderr)
        assert found is not None, gateway.stderr
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            await stub.Generate(unary_request("demo"), timeout=30)
            chunks = [chunk async for chunk in stub.StreamGenerate(request("demo"), timeout=30)]
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.Generate(unary_request("no-such-model"), timeout=30)
        scrape = await scrape_port(int(found["port"]))

    assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert scrape.value("grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") == 1
    assert scrape.value("grpc_server_handled_total", grpc_method="Generate", grpc_code="InvalidArgument") == 1
    assert scrape.value("grpc_server_msg_sent_total", grpc_method="StreamGenerate") == len(chunks)
    assert scrape.value("gateway_calls_total", gen_ai_request_model="demo", code="OK") == 2
    assert scrape.value("gateway_calls_total", gen_ai_request_model="unknown", reason="MODEL_NOT_FOUND") == 1
    assert scrape.value("gen_ai_client_token_usage_count", gen_ai_provider_name="demo") == 4  # 2 calls x 2 types
    assert scrape.value("gen_ai_server_time_to_first_token_seconds_count", deployment="demo/demo") == 1
