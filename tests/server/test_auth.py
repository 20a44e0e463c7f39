"""Token checks, and the client identity that authenticated calls carry."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.auth import CURRENT_CLIENT, BearerAuthInterceptor, authenticate, certificate_client
from server.config import ClientToken

TOKENS = [
    ClientToken("billing", hashlib.sha256(b"billing-token-123").digest()),
    ClientToken("search", hashlib.sha256(b"search-token-456").digest()),
]


@pytest.mark.parametrize(
    ("metadata", "client"),
    [
        ((("authorization", "Bearer billing-token-123"),), "billing"),
        ((("authorization", "Bearer search-token-456"),), "search"),
        ((("authorization", "BEARER search-token-456"),), "search"),
        ((("authorization", "Bearer  search-token-456 "),), "search"),
        ((("authorization", "Bearer search-token-457"),), None),
        ((("authorization", "search-token-456"),), None),
        ((("x-api-key", "search-token-456"),), None),
        ((), None),
        (None, None),
    ],
)
def test_authenticate(metadata: tuple[tuple[str, str], ...] | None, client: str | None) -> None:
    assert authenticate(metadata, TOKENS) == client


async def test_the_handler_sees_the_authenticated_client() -> None:
    async def who_am_i(request: pb.GenerateRequest, context: object) -> pb.GenerateResponse:
        return pb.GenerateResponse(content=CURRENT_CLIENT.get() or "")

    handler = grpc.unary_unary_rpc_method_handler(
        who_am_i,
        request_deserializer=pb.GenerateRequest.FromString,
        response_serializer=pb.GenerateResponse.SerializeToString,
    )
    server = grpc.aio.server(interceptors=[BearerAuthInterceptor(TOKENS)])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("holysheepai.AIService", {"Generate": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AIServiceStub(channel)

            async def who(token: str) -> str:
                metadata = (("authorization", f"Bearer {token}"),)
                return (await stub.Generate(pb.GenerateRequest(), metadata=metadata, timeout=30)).content

            assert list(await asyncio.gather(who("billing-token-123"), who("search-token-456"))) == [
                "billing",
                "search",
            ]
    finally:
        await server.stop(0)


CERTIFICATES = {"search.internal": "search", "spiffe://corp/search": "search", "billing.internal": "billing"}


@pytest.mark.parametrize(
    ("auth_context", "client"),
    [
        ({"x509_common_name": [b"search.internal"]}, "search"),
        (
            {"x509_common_name": [b"x"], "x509_subject_alternative_name": [b"a.example", b"spiffe://corp/search"]},
            "search",
        ),
        (
            {"x509_common_name": [b"search.internal"], "x509_subject_alternative_name": [b"spiffe://corp/search"]},
            "search",
        ),
        ({"x509_common_name": [b"search.internal"], "x509_subject_alternative_name": [b"billing.internal"]}, None),
        ({"x509_common_name": [b"stranger.internal"]}, None),
        ({"transport_security_type": [b"insecure"]}, None),
        ({}, None),
    ],
    ids=["cn", "san", "cn and san of one client", "two clients: ambiguous", "unknown", "no certificate", "empty"],
)
def test_certificate_client(auth_context: dict[str, list[bytes]], client: str | None) -> None:
    assert certificate_client(auth_context, CERTIFICATES) == client
