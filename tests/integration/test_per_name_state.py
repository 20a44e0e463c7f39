"""State keyed by what a client chooses stays bounded (issue 11, item 2): every new "provider/anything" model
name makes a circuit breaker, and only the most recently used MAX_PASSTHROUGH_BREAKERS are kept; a model name
longer than MAX_MODEL_NAME_CHARS is refused before it reaches any of that state."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.defaults import MAX_MODEL_NAME_CHARS, MAX_PASSTHROUGH_BREAKERS
from server.routing.catalog import Deployment
from tests.rpc import collect_stream, detail, error_info, rich_status, stub_for, unary_request

pytestmark = pytest.mark.asyncio


def breaker_names(gateway: Gateway) -> set[str]:
    return {breaker.name for breaker in gateway.router.resilience.breakers()}


async def generate_each(stub: pb_grpc.AIServiceAsyncStub, models: list[str]) -> None:
    """One Generate per model, 100 at a time; every one served."""
    for start in range(0, len(models), 100):
        replies = await asyncio.gather(
            *(stub.Generate(unary_request(m, "hi"), timeout=30) for m in models[start : start + 100])
        )
        assert {reply.deployment for reply in replies} == {
            f"demo/{m.partition('/')[2]}" for m in models[start : start + 100]
        }


async def test_pass_through_names_keep_at_most_the_bound_of_breakers_and_the_catalogs_stay(
    demo_gateway: Gateway,
) -> None:
    async with stub_for(demo_gateway) as stub:
        await stub.Generate(unary_request("demo", "hi"), timeout=30)
        catalog_breaker = demo_gateway.router.resilience.breaker(Deployment("demo", "demo"))
        invented = [f"demo/invented-{i}" for i in range(MAX_PASSTHROUGH_BREAKERS + 200)]
        await generate_each(stub, invented)

    names = breaker_names(demo_gateway)
    assert len(names) == MAX_PASSTHROUGH_BREAKERS + 1  # the bound, and the catalog's own deployment
    assert "demo/demo" in names
    assert demo_gateway.router.resilience.breaker(Deployment("demo", "demo")) is catalog_breaker
    assert f"demo/invented-{len(invented) - 1}" in names  # the most recent are kept
    assert "demo/invented-0" not in names  # the least recent went first


@pytest.mark.parametrize("length", [MAX_MODEL_NAME_CHARS + 1, 100_000])
async def test_a_model_name_over_the_limit_is_invalid_argument_naming_the_field(
    demo_gateway: Gateway, length: int
) -> None:
    model = "demo/" + "x" * (length - 5)
    async with stub_for(demo_gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(unary_request(model, "hi"), timeout=30)
        streamed = await collect_stream(stub, pb.StreamGenerateRequest(model=model, messages=[pb.Message(role="user")]))

    assert streamed.chunks == []
    assert streamed.error is not None
    for error in (refused.value, streamed.error):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "INVALID_REQUEST"
        bad_request = detail(rich_status(error), error_details_pb2.BadRequest)
        assert bad_request is not None
        assert [(v.field, v.description) for v in bad_request.field_violations] == [
            ("model", f"is {length} characters long; at most {MAX_MODEL_NAME_CHARS}")
        ]
    assert breaker_names(demo_gateway) == set()  # refused before any upstream state was made


async def test_a_model_name_at_the_limit_is_served(demo_gateway: Gateway) -> None:
    model = "demo/" + "x" * (MAX_MODEL_NAME_CHARS - 5)
    async with stub_for(demo_gateway) as stub:
        reply = await stub.Generate(unary_request(model, "hi"), timeout=30)
    assert reply.model == model
