"""`python -m server` with GATEWAY_METRICS_LISTEN: the real process serves /metrics beside gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from tests.metrics import scrape_port
from tests.process import free_port, run_gateway
from tests.rpc import request, unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`


async def test_a_gateway_process_counts_its_calls_on_its_metrics_listener(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    metrics_port = free_port()
    env = {"GATEWAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}
    async with (
        run_gateway(tmp_path, "--listen", address, env=env) as gateway,
        grpc.aio.insecure_channel(address) as channel,
    ):
        await gateway.wait_ready(address)  # one health Check answered SERVING (earlier ones may have failed)
        stub = pb_grpc.AIServiceStub(channel)
        await stub.Generate(unary_request("demo"), timeout=5)
        chunks = [chunk async for chunk in stub.StreamGenerate(request("demo"), timeout=5)]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Generate(unary_request("no-such-model"), timeout=5)
        scrape = await scrape_port(metrics_port)

    assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in gateway.stderr
    assert scrape.value("grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") == 1
    assert scrape.value("grpc_server_handled_total", grpc_method="Generate", grpc_code="InvalidArgument") == 1
    assert scrape.value("grpc_server_msg_sent_total", grpc_method="StreamGenerate") == len(chunks)
    assert scrape.value("grpc_server_handled_total", grpc_method="Check", grpc_code="OK") >= 1
    assert scrape.value("gateway_calls_total", gen_ai_request_model="demo", code="OK") == 2
    assert scrape.value("gateway_calls_total", gen_ai_request_model="unknown", reason="MODEL_NOT_FOUND") == 1
    assert scrape.value("gen_ai_client_token_usage_count", gen_ai_provider_name="demo") == 4  # 2 calls x 2 types
    assert scrape.value("gen_ai_server_time_to_first_token_seconds_count", deployment="demo/demo") == 1
