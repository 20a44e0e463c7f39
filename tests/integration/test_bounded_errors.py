"""Error details stay bounded whatever the client sent (issue 11, item 4): a status that grew with the request
would pass gRPC's 8 KiB trailer limit, and the client would see RESOURCE_EXHAUSTED "metadata size exceeds limit"
instead of the INVALID_ARGUMENT it was owed."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import GatewayConfig, ProviderConfig
from server.errors import MAX_MESSAGE_BYTES, MAX_STATUS_BYTES, MAX_VIOLATIONS
from server.routing.catalog import ModelConfig
from tests.conftest import GatewayFactory
from tests.rpc import detail, error_info, rich_status, stub_for

pytestmark = pytest.mark.asyncio

# Well under gRPC's 8 KiB: the whole trailer block, status details and message included.
TRAILER_BUDGET_BYTES = 4096
CATALOG = [f"acme-cloud/frontier-model-family-{i:03d}-instruct" for i in range(300)]


@pytest.fixture
async def big_catalog_gateway(make_gateway: GatewayFactory) -> Gateway:
    models = tuple(ModelConfig(name=name, provider="demo", upstream_model="demo") for name in CATALOG)
    return await make_gateway(
        GatewayConfig(listen="127.0.0.1:0", providers=(ProviderConfig(name="demo", kind="demo"),), models=models)
    )


def trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    return sum(len(key) + len(value) for key, value in error.trailing_metadata() or ())


async def refused(gateway: Gateway, request: pb.GenerateRequest) -> grpc.aio.AioRpcError:
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Generate(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    status = rich_status(error.value)
    assert status.ByteSize() <= MAX_STATUS_BYTES
    assert len((error.value.details() or "").encode()) <= MAX_MESSAGE_BYTES
    assert trailer_bytes(error.value) < TRAILER_BUDGET_BYTES
    return error.value


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    bad_request = detail(rich_status(error), error_details_pb2.BadRequest)
    assert bad_request is not None
    return [(v.field, v.description) for v in bad_request.field_violations]


async def test_a_hundred_bad_roles_list_the_first_ten_and_count_the_rest(big_catalog_gateway: Gateway) -> None:
    messages = [pb.Message(role=f"robot-{i}", content="hi") for i in range(100)]
    error = await refused(big_catalog_gateway, pb.GenerateRequest(model=CATALOG[0], messages=messages))

    info = error_info(error)
    assert (info.reason, info.metadata["violations"]) == ("INVALID_REQUEST", "100")
    assert violations(error) == [
        (f"messages[{i}].role", f"must be system, user, assistant or tool, got 'robot-{i}'")
        for i in range(MAX_VIOLATIONS)
    ]
    assert (error.details() or "").endswith("; and 95 more")


async def test_a_five_kilobyte_role_is_echoed_cut_with_its_length(big_catalog_gateway: Gateway) -> None:
    role = "r" * 5000
    error = await refused(
        big_catalog_gateway, pb.GenerateRequest(model=CATALOG[0], messages=[pb.Message(role=role, content="hi")])
    )

    assert violations(error) == [
        ("messages[0].role", f"must be system, user, assistant or tool, got '{'r' * 64}'… (5000 characters)")
    ]


async def test_a_four_kilobyte_model_name_is_refused_for_its_length(big_catalog_gateway: Gateway) -> None:
    error = await refused(
        big_catalog_gateway, pb.GenerateRequest(model="m" * 4096, messages=[pb.Message(role="user", content="hi")])
    )

    assert violations(error) == [("model", "is 4096 characters long; at most 256")]


async def test_a_typo_against_a_300_model_catalog_suggests_a_few_and_lists_twenty(
    big_catalog_gateway: Gateway,
) -> None:
    typo = "acme-cloud/frontier-model-family-042-instrukt"
    error = await refused(
        big_catalog_gateway, pb.GenerateRequest(model=typo, messages=[pb.Message(role="user", content="hi")])
    )

    info = error_info(error)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["model"] == typo
    assert len(info.metadata["closest"].split(",")) <= 3
    assert CATALOG[42] in info.metadata["closest"].split(",")
    listed = info.metadata["known_models"].split(",")
    assert listed == CATALOG[: len(listed)]  # whole names, as many as fit
    assert 1 <= len(listed) <= 20
    assert info.metadata["known_models_total"] == "300"
    [(field, description)] = violations(error)
    assert field == "model"
    assert description.startswith(f"unknown model {typo!r}; did you mean ")
