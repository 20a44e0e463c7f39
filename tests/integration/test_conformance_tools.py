"""The conformance table's rows for tools and structured output: the same client request gives the same
client-visible shape from OpenAI-compatible, Anthropic and Gemini upstreams (their byte-exact fakes).

The fakes' echo model calls every declared tool named in the last user message, with the arguments
`{"text": <that message>}` streamed in the echo's pieces, and answers a tool result with its text; asked
for JSON it answers with that JSON text (see tests/fakes/http_server.py). Each provider has its own wire
shape for all of it (OpenAI `tool_calls` deltas, Anthropic `tool_use` blocks and `input_json_delta`,
Gemini `functionCall` parts; JSON via `response_format`, a forced tool, `responseMimeType`); what the
client sees must not depend on it.
"""

from __future__ import annotations

import json

import pytest

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.types import Usage
from tests.integration.test_conformance import Upstream, assert_final, gateway, upstream
from tests.rpc import collect_stream, stub_for

__all__ = ["gateway", "upstream"]  # the fixtures, imported for pytest

WEATHER = pb.Tool(
    name="get_weather",
    description="The weather in a city",
    parameters=json.dumps({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
)
TIME = pb.Tool(name="get_time", description="The time in a city", parameters='{"type":"object","properties":{}}')
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
        "additionalProperties": False,
    }
)


def config(**fields: object) -> pb.GenerationConfig:
    return pb.GenerationConfig(**fields)  # type: ignore[arg-type]


def stream_request(
    text: str, cfg: pb.GenerationConfig, messages: list[pb.Message] | None = None
) -> pb.StreamGenerateRequest:
    return pb.StreamGenerateRequest(
        model="echo", messages=messages or [pb.Message(role="user", content=text)], config=cfg
    )


def unary(req: pb.StreamGenerateRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=req.model, messages=req.messages, config=req.config)


def calls_of(pieces: list[pb.ToolCallDelta]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of each call, assembled from its pieces, in index order; checks that only
    the first piece of a call names it."""
    calls: dict[int, list[str]] = {}
    for piece in pieces:
        if piece.index not in calls:
            assert piece.id, "the first piece of a call carries its id"
            assert piece.name, "the first piece of a call carries its name"
            calls[piece.index] = [piece.id, piece.name, piece.arguments]
        else:
            assert (piece.id, piece.name) == ("", ""), "only the first piece of a call carries its id and name"
            calls[piece.index][2] += piece.arguments
    assert sorted(calls) == list(range(len(calls)))
    return [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]


def args(text: str) -> str:
    return json.dumps({"text": text}, separators=(",", ":"))


async def test_one_tool_call_streams_as_pieces_then_tool_calls(gateway: Gateway, upstream: Upstream) -> None:
    req = stream_request("call get_weather now", config(tools=[WEATHER, TIME]))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)

    assert outcome.error is None
    assert outcome.deltas == []
    calls = calls_of(outcome.tool_pieces)
    assert [(name, arguments) for _, name, arguments in calls] == [("get_weather", args("call get_weather now"))]
    # OpenAI and Anthropic stream the arguments in fragments after an opening piece; Gemini sends a call whole.
    assert len(outcome.tool_pieces) == (1 if upstream.kind == "gemini" else 4)
    final = outcome.finals[0]
    assert final is outcome.chunks[-1]
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert_final(final, upstream, Usage(3, 3, 6))


async def test_parallel_tool_calls_stream_one_call_after_the_other(gateway: Gateway, upstream: Upstream) -> None:
    req = stream_request("get_weather and get_time", config(tools=[WEATHER, TIME]))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)

    assert outcome.error is None
    calls = calls_of(outcome.tool_pieces)
    expected = args("get_weather and get_time")
    assert [(name, arguments) for _, name, arguments in calls] == [("get_weather", expected), ("get_time", expected)]
    assert calls[0][0] != calls[1][0], "every call has its own id"
    indexes = [piece.index for piece in outcome.tool_pieces]
    assert indexes == sorted(indexes), "the pieces of one call are not interleaved with another's"
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert_final(outcome.finals[0], upstream, Usage(3, 6, 9))


async def test_generate_returns_the_tool_calls_whole(gateway: Gateway, upstream: Upstream) -> None:
    req = unary(stream_request("get_weather and get_time", config(tools=[WEATHER, TIME])))
    async with stub_for(gateway) as stub:
        response = await stub.Generate(req, timeout=10)

    expected = args("get_weather and get_time")
    assert response.content == ""
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("get_weather", expected), ("get_time", expected)]
    assert all(c.id for c in response.tool_calls)
    assert response.tool_calls[0].id != response.tool_calls[1].id
    assert response.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert_final(response, upstream, Usage(3, 6, 9))


async def test_a_tool_result_is_answered_in_the_next_request(gateway: Gateway, upstream: Upstream) -> None:
    history = [
        pb.Message(role="user", content="get_weather in paris"),
        pb.Message(
            role="assistant", tool_calls=[pb.ToolCall(id="call_1", name="get_weather", arguments=args("paris"))]
        ),
        pb.Message(role="tool", tool_call_id="call_1", content="sunny and warm"),
    ]
    req = stream_request("", config(tools=[WEATHER]), history)
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)
        response = await stub.Generate(unary(req), timeout=10)

    assert outcome.error is None
    assert "".join(outcome.deltas) == "sunny and warm"
    assert outcome.tool_pieces == []
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_STOP
    assert_final(outcome.finals[0], upstream, Usage(6, 3, 9))
    assert (response.content, list(response.tool_calls)) == ("sunny and warm", [])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), []),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), ["get_weather"]),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NAMED, name="get_time"), ["get_time"]),
    ],
    ids=["none", "required", "named"],
)
async def test_tool_choice_means_the_same_everywhere(
    gateway: Gateway, upstream: Upstream, mode: pb.ToolChoice, expected: list[str]
) -> None:
    req = stream_request("what is up", config(tools=[WEATHER, TIME], tool_choice=mode))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)

    assert outcome.error is None
    assert [name for _, name, _ in calls_of(outcome.tool_pieces)] == expected
    if not expected:
        assert "".join(outcome.deltas) == "what is up"
        assert outcome.finals[0].finish_reason == pb.FINISH_REASON_STOP


@pytest.mark.parametrize(
    "fmt",
    [
        pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="echo", schema=SCHEMA, strict=True)),
        pb.ResponseFormat(json_object=pb.JsonObjectFormat()),
    ],
    ids=["json_schema", "json_object"],
)
async def test_json_output_is_the_reply_text_streamed_and_whole(
    gateway: Gateway, upstream: Upstream, fmt: pb.ResponseFormat
) -> None:
    req = stream_request("hello brave world", config(response_format=fmt))
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)
        response = await stub.Generate(unary(req), timeout=10)

    assert outcome.error is None
    assert outcome.tool_pieces == []
    assert json.loads("".join(outcome.deltas)) == {"text": "hello brave world"}
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_STOP
    assert_final(outcome.finals[0], upstream, Usage(3, 3, 6))
    assert json.loads(response.content) == {"text": "hello brave world"}
    assert (response.finish_reason, list(response.tool_calls)) == (pb.FINISH_REASON_STOP, [])
