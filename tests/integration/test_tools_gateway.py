"""Tools and structured output through a real gateway: the demo model's deterministic answers, the
catalog's capabilities (ListModels, FAILED_PRECONDITION before any upstream call), the request checks
(INVALID_ARGUMENT with a BadRequest field path for each problem), and an InteractiveStream conversation
that keeps its tool calls so a client can answer them in its next turn."""

from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server import defaults
from server.app import Gateway
from server.config import GatewayConfig, ModelConfig, ProviderConfig
from tests.conftest import GatewayFactory
from tests.interactive import Bidi
from tests.rpc import collect_stream, detail, error_info, rich_status, stub_for

Code = grpc.StatusCode

CITY = json.dumps({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}})
WEATHER = pb.Tool(name="get_weather", description="The weather in a city", parameters=CITY)
CARD = json.dumps(
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "words": {"type": "integer"}, "tags": {"type": "array"}},
        "required": ["name", "words", "tags"],
    }
)


def stream_req(text: str, config: pb.GenerationConfig, model: str = "demo") -> pb.StreamGenerateRequest:
    return pb.StreamGenerateRequest(model=model, messages=[pb.Message(role="user", content=text)], config=config)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    """The demo provider as two models: `demo` can do everything, `plain` only JSON objects."""
    demo = ProviderConfig(name="demo", kind="demo")
    models = (
        ModelConfig(name="demo", provider="demo"),
        ModelConfig(name="plain", provider="demo", upstream_model="demo", capabilities=frozenset({"json_object"})),
    )
    return await make_gateway(GatewayConfig(listen="127.0.0.1:0", providers=(demo,), models=models))


async def test_the_demo_calls_a_tool_with_arguments_that_fit_its_schema(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, stream_req("get_weather for Paris", pb.GenerationConfig(tools=[WEATHER])))

    assert outcome.error is None
    first, *rest = outcome.tool_pieces
    assert (first.index, first.id, first.name, first.arguments) == (0, "call_1", "get_weather", "")
    assert json.loads("".join(p.arguments for p in rest)) == {"city": "get_weather for Paris", "days": 3}
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_the_demo_answers_a_json_schema_with_an_instance_of_it(gateway: Gateway) -> None:
    fmt = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="card", schema=CARD))
    request = pb.GenerateRequest(
        model="demo",
        messages=[pb.Message(role="user", content="ada lovelace")],
        config=pb.GenerationConfig(response_format=fmt),
    )
    async with stub_for(gateway) as stub:
        response = await stub.Generate(request, timeout=10)
    assert json.loads(response.content) == {"name": "ada lovelace", "words": 2, "tags": []}


async def test_list_models_shows_each_models_capabilities(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        listing = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
    capabilities = {m.name: list(m.capabilities) for m in listing.models}
    assert capabilities == {"demo": ["json_object", "json_schema", "tools"], "plain": ["json_object"]}
    assert [list(d.capabilities) for d in listing.models[1].deployments] == [["json_object"]]


@pytest.mark.parametrize(
    ("config", "messages", "capability"),
    [
        (pb.GenerationConfig(tools=[WEATHER]), [], "tools"),
        (
            pb.GenerationConfig(
                response_format=pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="card", schema=CARD))
            ),
            [],
            "json_schema",
        ),
        (
            pb.GenerationConfig(),
            [pb.Message(role="user", parts=[pb.ContentPart(image=pb.Image(url="https://example.com/a.png"))])],
            "vision",
        ),
        (pb.GenerationConfig(reasoning=pb.ReasoningOptions(effort=pb.REASONING_EFFORT_LOW)), [], "reasoning"),
    ],
    ids=["tools", "json_schema", "vision", "reasoning"],
)
async def test_a_capability_the_model_lacks_is_failed_precondition_before_any_upstream_call(
    gateway: Gateway, config: pb.GenerationConfig, messages: list[pb.Message], capability: str
) -> None:
    req = pb.StreamGenerateRequest(
        model="plain", messages=[pb.Message(role="user", content="hi"), *messages], config=config
    )
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(pb.GenerateRequest(model="plain", messages=req.messages, config=config), timeout=10)

    assert outcome.chunks == []
    for error in (outcome.error, raised.value):
        assert error is not None
        assert error.code() == Code.FAILED_PRECONDITION
        info = error_info(error)
        assert info.reason == "CAPABILITY_UNSUPPORTED"
        assert (info.metadata["capability"], info.metadata["model"]) == (capability, "plain")


def _schema(depth: int) -> str:
    inner: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        inner = {"type": "object", "properties": {"x": inner}}
    return json.dumps(inner)


BAD = [
    ("bad name", pb.GenerationConfig(tools=[pb.Tool(name="get weather")]), "config.tools[0].name"),
    (
        "duplicate",
        pb.GenerationConfig(tools=[WEATHER, WEATHER]),
        "config.tools[1].name",
    ),
    (
        "not json",
        pb.GenerationConfig(tools=[WEATHER, pb.Tool(name="b"), pb.Tool(name="c", parameters="{nope")]),
        "config.tools[2].parameters",
    ),
    (
        "not a schema",
        pb.GenerationConfig(tools=[pb.Tool(name="a", parameters='{"type":"object","properties":{"x":{"type":7}}}')]),
        "config.tools[0].parameters",
    ),
    ("too deep", pb.GenerationConfig(tools=[pb.Tool(name="a", parameters=_schema(40))]), "config.tools[0].parameters"),
    (
        "too large",
        pb.GenerationConfig(
            tools=[pb.Tool(name="a", parameters=json.dumps({"type": "object", "description": "x" * 70_000}))]
        ),
        "config.tools[0].parameters",
    ),
    (
        "too many",
        pb.GenerationConfig(tools=[pb.Tool(name=f"t{i}") for i in range(defaults.MAX_TOOLS + 1)]),
        "config.tools",
    ),
    (
        "named unknown",
        pb.GenerationConfig(
            tools=[WEATHER], tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NAMED, name="get_time")
        ),
        "config.tool_choice.name",
    ),
    (
        "schema missing",
        pb.GenerationConfig(response_format=pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="x"))),
        "config.response_format.json_schema.schema",
    ),
]


@pytest.mark.parametrize(("config", "field"), [(c, f) for _, c, f in BAD], ids=[name for name, _, _ in BAD])
async def test_bad_tools_and_schemas_are_invalid_argument_naming_the_field(
    gateway: Gateway, config: pb.GenerationConfig, field: str
) -> None:
    req = pb.GenerateRequest(model="demo", messages=[pb.Message(role="user", content="hi")], config=config)
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(req, timeout=10)

    assert raised.value.code() == Code.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "INVALID_REQUEST"
    bad_request = detail(rich_status(raised.value), error_details_pb2.BadRequest)
    assert bad_request is not None
    assert [v.field for v in bad_request.field_violations] == [field]


async def test_bad_tool_messages_name_their_fields(gateway: Gateway) -> None:
    messages = [
        pb.Message(role="user", content="hi"),
        pb.Message(role="assistant", tool_calls=[pb.ToolCall(id="", name="get_weather", arguments="[1]")]),
        pb.Message(role="tool", content="sunny"),
        pb.Message(role="user", content="x", tool_call_id="call_1"),
    ]
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(pb.GenerateRequest(model="demo", messages=messages), timeout=10)

    bad_request = detail(rich_status(raised.value), error_details_pb2.BadRequest)
    assert bad_request is not None
    assert [v.field for v in bad_request.field_violations] == [
        "messages[1].tool_calls[0].id",
        "messages[1].tool_calls[0].arguments",
        "messages[2].tool_call_id",
        "messages[3].tool_call_id",
    ]


async def test_a_conversation_keeps_its_tool_calls_and_a_next_turn_answers_them(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("demo", config=pb.GenerationConfig(tools=[WEATHER]))
        await bidi.turn("1", "get_weather in Oslo")
        first = await bidi.until_end_of("1")
        await bidi.turn("2", messages=[pb.Message(role="tool", tool_call_id="call_1", content="cold and clear")])
        second = await bidi.until_end_of("2")
        await bidi.finish()

    pieces = [r.delta.tool_call for r in first if r.WhichOneof("kind") == "delta"]
    assert (pieces[0].id, pieces[0].name) == ("call_1", "get_weather")
    done = first[-1].done
    assert done.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.name) for c in done.tool_calls] == [("call_1", "get_weather")]
    assert json.loads(done.tool_calls[0].arguments) == {"city": "get_weather in Oslo", "days": 3}
    assert [r.delta.text for r in second if r.WhichOneof("kind") == "delta"] == ["cold", " and", " clear"]
    # The second turn was sent with the first: its user message (3 words) and the tool result (3 words).
    assert second[-1].done.finish_reason == pb.FINISH_REASON_STOP
    assert second[-1].done.usage.prompt_tokens == 6
