"""The clients' tool and structured-output helpers against a real gateway's demo model, and the CLI's
--json-schema."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from client import AIClient, AsyncAIClient, FinishReason, Message, StreamEnd, TextDelta, Tool, ToolCall, ToolCallDelta
from client.__main__ import main

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_a_tool_is_made_from_a_plain_dict_or_openais_shape() -> None:
    assert Tool.from_dict(WEATHER) == Tool.from_dict({"type": "function", "function": WEATHER})
    assert Tool.from_dict(WEATHER).parameters["required"] == ["city"]


def test_tool_messages_answer_a_call_by_its_id() -> None:
    call = ToolCall("call_1", "get_weather", '{"city":"Oslo"}')
    assert call.args == {"city": "Oslo"}
    assert Message.calling([call]) == Message("assistant", "", tool_calls=(call,))
    assert Message.tool_result(call, {"temp": -3}) == Message("tool", '{"temp":-3}', tool_call_id="call_1")


async def test_the_call_tool_answer_loop(demo_target: str) -> None:
    def loop() -> tuple[list[ToolCall], str]:
        with AIClient(target=demo_target, plaintext=True) as client:
            history: list[Message] = [Message("user", "get_weather in Oslo")]
            result = client.generate(messages=history, model="demo", tools=[WEATHER])
            calls = list(result.tool_calls)
            while result.finish_reason is FinishReason.TOOL_CALLS:
                history.append(Message.calling(result.tool_calls, result.text))
                history += [Message.tool_result(call, f"cold in {call.args['city']}") for call in result.tool_calls]
                result = client.generate(messages=history, model="demo", tools=[WEATHER])
            return calls, result.text

    calls, answer = await asyncio.to_thread(loop)

    assert [(c.id, c.name, c.args) for c in calls] == [("call_1", "get_weather", {"city": "get_weather in Oslo"})]
    assert answer == "cold in get_weather in Oslo"


async def test_a_stream_yields_tool_call_pieces_and_ends_with_the_calls_whole(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        events = [e async for e in client.stream_generate("get_weather now", model="demo", tools=[WEATHER])]

    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    assert (pieces[0].id, pieces[0].name) == ("call_1", "get_weather")
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.name, c.args) for c in end.tool_calls] == [("get_weather", {"city": "get_weather now"})]
    assert "".join(p.arguments for p in pieces) == end.tool_calls[0].arguments


async def test_a_session_turn_yields_tool_calls_and_the_next_turn_answers_them(demo_target: str) -> None:
    async with (
        AsyncAIClient(target=demo_target, plaintext=True) as client,
        client.interactive(model="demo", tools=[WEATHER]) as session,
    ):
        first = await session.send("get_weather please")
        reply = await session.send(messages=[Message.tool_result(call, "warm") for call in first.tool_calls])

    assert [c.name for c in first.tool_calls] == ["get_weather"]
    assert (reply.text, reply.finish_reason) == ("warm", FinishReason.STOP)


async def test_json_schema_output_from_a_dict(demo_target: str) -> None:
    schema = {"title": "person", "type": "object", "properties": {"name": {"type": "string"}}}
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        result = await client.generate("ada", model="demo", json_schema=schema)
        deltas = [
            e.text
            async for e in client.stream_generate("ada", model="demo", json_object=True)
            if isinstance(e, TextDelta)
        ]
    assert json.loads(result.text) == {"name": "ada"}
    assert json.loads("".join(deltas)) == {"text": "ada"}


async def test_the_cli_answers_with_json_matching_a_schema_file(
    demo_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "card.json"
    schema.write_text(
        json.dumps({"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}})
    )
    argv = ["generate", "--model", "demo", "--prompt", "ada lovelace", "--json-schema", str(schema)]
    code = await asyncio.to_thread(main, [*argv, "--target", demo_target, "--plaintext"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {"name": "ada lovelace", "n": 2}


@pytest.mark.parametrize(("content", "problem"), [(None, "No such file"), ("[1, 2]", "not a schema object")])
def test_a_bad_schema_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, problem: str
) -> None:
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    code = main(["generate", "--model", "demo", "--prompt", "x", "--json-schema", str(path), "--plaintext"])
    assert code == 2
    assert problem in capsys.readouterr().err
