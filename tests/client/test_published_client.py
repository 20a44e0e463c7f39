"""The code of the published client, as its users wrote it: the generated stub on a plain grpc channel
with TLS and a bearer metadata plugin. The gateway must keep answering it exactly like this."""

from __future__ import annotations

import asyncio

import grpc

from generated import ai_service_pb2, ai_service_pb2_grpc
from server.app import Gateway
from tests.certs import CertFiles
from tests.conftest import CLIENT_TOKEN


class BearerAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


def published_client_stream(port: int, ca_file: str) -> list[ai_service_pb2.StreamChunk]:
    with open(ca_file, "rb") as f:
        ca = f.read()
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(ca), grpc.metadata_call_credentials(BearerAuth(CLIENT_TOKEN))
    )
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        stub = ai_service_pb2_grpc.AIServiceStub(channel)
        request = ai_service_pb2.StreamGenerateRequest(
            model="gpt-test",
            messages=[ai_service_pb2.Message(role="user", content="the quick brown fox")],
            config=ai_service_pb2.GenerationConfig(temperature=0.7, max_tokens=100),
        )
        return list(stub.StreamGenerate(request, timeout=10))


async def test_published_client_streams_deltas_then_one_final_chunk(
    secure_gateway: Gateway, tls_files: CertFiles
) -> None:
    chunks = await asyncio.to_thread(published_client_stream, secure_gateway.port, str(tls_files.ca_cert))
    *deltas, final = chunks
    assert "".join(chunk.delta for chunk in deltas) == "the quick brown fox"
    assert not any(chunk.is_complete for chunk in deltas)
    assert final.is_complete
    assert final.delta == ""
    assert final.finish_reason == ai_service_pb2.FINISH_REASON_STOP
    assert (final.model, final.provider) == ("gpt-test", "fake-openai")
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (4, 4, 8)
