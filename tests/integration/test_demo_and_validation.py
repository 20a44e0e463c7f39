"""The embedded default (the offline demo model) and request validation, over gRPC."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.defaults import MAX_MESSAGE_OVERHEAD_BYTES, MAX_REQUEST_CONTENT_BYTES
from tests.rpc import collect_stream, detail, error_info, request, rich_status, stub_for, unary_request


async def test_demo_streams_the_last_user_message_word_by_word(demo_gateway: Gateway) -> None:
    async with stub_for(demo_gateway) as stub:
        outcome = await collect_stream(stub, request("demo", "hello brave world"))
    assert outcome.error is None
    assert outcome.deltas == ["hello", " brave", " world"]
    [final] = outcome.finals
    assert (final.finish_reason, final.model, final.provider) == (pb.FINISH_REASON_STOP, "demo", "demo")
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (3, 3, 6)


async def test_demo_honours_max_tokens_and_stop(demo_gateway: Gateway) -> None:
    async with stub_for(demo_gateway) as stub:
        truncated = await stub.Generate(unary_request("demo", "one two three four", max_tokens=2), timeout=30)
        stopped = await stub.Generate(unary_request("demo", "one two STOP three", stop=["STOP"]), timeout=30)
    assert (truncated.content, truncated.finish_reason) == ("one two", pb.FINISH_REASON_LENGTH)
    assert (stopped.content, stopped.finish_reason) == ("one two", pb.FINISH_REASON_STOP)


async def test_invalid_requests_list_every_violation_in_bad_request(demo_gateway: Gateway) -> None:
    bad = pb.GenerateRequest(
        model="",
        messages=[pb.Message(role="bot", content="hi")],
        config=pb.GenerationConfig(temperature=2.5, top_p=0, max_tokens=0, stop=["a", "b", "c", "d", "e"]),
    )
    async with stub_for(demo_gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(bad, timeout=30)
        outcome = await collect_stream(
            stub, pb.StreamGenerateRequest(model="", messages=bad.messages, config=bad.config)
        )

    for error in (raised.value, outcome.error):
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "INVALID_REQUEST"
        bad_request = detail(rich_status(error), error_details_pb2.BadRequest)
        assert bad_request is not None
        assert [v.field for v in bad_request.field_violations] == [
            "model",
            "messages[0].role",
            "config.temperature",
            "config.top_p",
            "config.max_tokens",
            "config.stop",
        ]
    assert outcome.chunks == []


async def test_an_unknown_model_names_the_known_ones(demo_gateway: Gateway) -> None:
    async with stub_for(demo_gateway) as stub:
        outcome = await collect_stream(stub, request("gpt-9"))
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(outcome.error)
    assert (info.reason, info.metadata["model"], info.metadata["known_models"]) == ("MODEL_NOT_FOUND", "gpt-9", "demo")
    assert outcome.error.details() == "unknown model 'gpt-9'; known models: demo"


async def test_no_messages_is_invalid(demo_gateway: Gateway) -> None:
    async with stub_for(demo_gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(pb.GenerateRequest(model="demo"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages: at least one message is required" in (raised.value.details() or "")


async def test_content_over_the_cap_is_invalid_argument_naming_the_size(demo_gateway: Gateway) -> None:
    async with stub_for(demo_gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(unary_request("demo", "x" * (MAX_REQUEST_CONTENT_BYTES + 1)), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = detail(rich_status(raised.value), error_details_pb2.BadRequest)
    assert bad_request is not None
    [violation] = bad_request.field_violations
    assert violation.field == "messages"
    assert f"the limit is {MAX_REQUEST_CONTENT_BYTES}" in violation.description


async def test_a_message_beyond_the_grpc_receive_limit_is_refused_by_grpc(demo_gateway: Gateway) -> None:
    # Far over the cap, gRPC itself refuses to read the message; the status is RESOURCE_EXHAUSTED.
    huge = "x" * (MAX_REQUEST_CONTENT_BYTES + MAX_MESSAGE_OVERHEAD_BYTES + 1)
    async with stub_for(demo_gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(unary_request("demo", huge), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_list_models_describes_the_catalog(openai_gateway: Gateway) -> None:
    async with stub_for(openai_gateway) as stub:
        reply = await stub.ListModels(pb.ListModelsRequest(), timeout=30)
    names = [m.name for m in reply.models]
    assert names == sorted(names)
    assert "demo" in names
    assert "gpt-test" in names
    gpt = next(m for m in reply.models if m.name == "gpt-test")
    assert (gpt.provider, gpt.max_output_tokens) == ("fake-openai", 32_000)
    assert [(d.provider, d.upstream_model, d.weight) for d in gpt.deployments] == [("fake-openai", "gpt-test", 1.0)]
