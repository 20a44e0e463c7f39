"""Bearer-token authentication: every AIService RPC needs a known token; health checks do not."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from tests.conftest import CLIENT_TOKEN, GatewayFactory, client_auth, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import health_check, health_watch
from tests.rpc import collect_stream, error_info, request, unary_request

GOOD = (("authorization", f"Bearer {CLIENT_TOKEN}"),)
BAD_METADATA = {
    "no header": None,
    "wrong token": (("authorization", "Bearer not-the-token"),),
    "token without scheme": (("authorization", CLIENT_TOKEN),),
    "basic scheme": (("authorization", f"Basic {CLIENT_TOKEN}"),),
    "empty bearer": (("authorization", "Bearer "),),
}


@pytest.fixture
async def auth_gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    return await make_gateway(openai_config(fake_openai.base_url, auth=client_auth()))


@pytest.fixture
async def channel(auth_gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_gateway.port}") as channel:
        yield channel


def assert_unauthenticated(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "UNAUTHENTICATED"
    assert "Bearer <token>" in (error.details() or "")
    assert CLIENT_TOKEN not in (error.details() or "")


@pytest.mark.parametrize("metadata", BAD_METADATA.values(), ids=BAD_METADATA.keys())
async def test_every_rpc_rejects_a_call_without_a_valid_token(
    channel: grpc.aio.Channel,
    fake_openai: FakeOpenAIUpstream,
    metadata: tuple[tuple[str, str], ...] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stub = pb_grpc.AIServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.Generate(unary_request("gpt-test"), metadata=metadata, timeout=30)
    assert_unauthenticated(unary.value)

    outcome = await collect_stream(stub, request("gpt-test"), metadata=metadata)
    assert outcome.chunks == []
    assert outcome.error is not None
    assert_unauthenticated(outcome.error)

    # No write before the read: a write racing the server's early rejection can turn the status into
    # INTERNAL on the client side (grpc/grpc#36066); the rejection needs no message anyway.
    bidi = stub.InteractiveStream(metadata=metadata, timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as interactive:
        await bidi.read()
    assert_unauthenticated(interactive.value)

    # A rejected call never reaches an upstream, and no token is logged.
    assert fake_openai.requests == []
    assert CLIENT_TOKEN not in caplog.text


async def test_a_valid_token_reaches_every_rpc(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.AIServiceStub(channel)
    response = await stub.Generate(unary_request("gpt-test"), metadata=GOOD, timeout=30)
    assert response.content == "hello brave world"
    outcome = await collect_stream(stub, request("gpt-test"), metadata=GOOD)
    assert outcome.error is None
    assert len(outcome.finals) == 1

    bidi = stub.InteractiveStream(metadata=GOOD, timeout=30)
    await bidi.write(pb.InteractiveRequest(start=pb.SessionStart(model="gpt-test")))
    await bidi.write(pb.InteractiveRequest(message=pb.TurnRequest(request_id="1", content="hello")))
    await bidi.done_writing()
    kinds = [response.WhichOneof("kind") async for response in bidi]
    assert kinds == ["started", "delta", "done"]
    assert await bidi.code() == grpc.StatusCode.OK


async def test_the_bearer_scheme_is_case_insensitive(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.AIServiceStub(channel)
    metadata = (("authorization", f"bearer {CLIENT_TOKEN}"),)
    assert (await stub.Generate(unary_request("gpt-test"), metadata=metadata, timeout=30)).content


async def test_health_checks_need_no_token(channel: grpc.aio.Channel) -> None:
    for service in ("", "holysheepai.AIService"):
        reply = await health_check(channel)(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = health_watch(channel)(health_pb2.HealthCheckRequest(service=""), timeout=30)
    first = await watch.read()
    assert isinstance(first, health_pb2.HealthCheckResponse)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


async def test_reflection_needs_no_token(channel: grpc.aio.Channel) -> None:
    # Reflection only describes the published contract; without it, grpcurl could not even say
    # "Unauthenticated" for a call made without a token.
    from grpc_reflection.v1alpha import reflection_pb2

    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest.SerializeToString,
        reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = reflect(timeout=30)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    assert isinstance(reply, reflection_pb2.ServerReflectionResponse)
    names = {service.name for service in reply.list_services_response.service}
    assert "holysheepai.AIService" in names
    call.cancel()
