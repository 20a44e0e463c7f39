"""How tools, tool calls, tool results and response formats map onto each provider's wire format (the
bodies sent), and the stream corners the fakes do not produce."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.providers import anthropic, gemini
from server.providers.openai import OpenAIProvider
from server.providers.openai import _body as openai_body
from server.types import (
    ChatMessage,
    ChatRequest,
    OutputFormat,
    ResponseFormat,
    Role,
    SamplingParams,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolMode,
)
from tests.mock_upstream import collect, scripted, sse

SCHEMA = json.dumps(
    {"type": "object", "properties": {"city": {"type": ["string", "null"]}}, "additionalProperties": False}
)
WEATHER = Tool("get_weather", "The weather", SCHEMA)
CALL = ToolCall("call_1", "get_weather", '{"city":"Oslo"}')
HISTORY = (
    ChatMessage(Role.USER, "weather?"),
    ChatMessage(Role.ASSISTANT, "Looking.", tool_calls=(CALL,)),
    ChatMessage(Role.TOOL, "cold", tool_call_id="call_1"),
    ChatMessage(Role.USER, "and tomorrow?"),
)


def request(**params: Any) -> ChatRequest:
    return ChatRequest("m", HISTORY, SamplingParams(**params), max_output_tokens=100)


def test_openai_sends_tools_choice_calls_and_results_as_the_api_defines_them() -> None:
    body = openai_body(request(tools=(WEATHER,), tool_choice=ToolChoice(ToolMode.NAMED, "get_weather")))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "The weather", "parameters": json.loads(SCHEMA)},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["messages"][1] == {
        "role": "assistant",
        "content": "Looking.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }
    assert body["messages"][2] == {"role": "tool", "content": "cold", "tool_call_id": "call_1"}


def test_openai_response_formats() -> None:
    fmt = ResponseFormat(OutputFormat.JSON_SCHEMA, "card", SCHEMA, strict=True)
    assert openai_body(request(response_format=fmt))["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "card", "schema": json.loads(SCHEMA), "strict": True},
    }
    plain = openai_body(request(response_format=ResponseFormat(OutputFormat.JSON_OBJECT)))
    assert plain["response_format"] == {"type": "json_object"}


async def test_openai_parallel_calls_numbered_0_by_a_compatible_server_become_two_calls() -> None:
    # Some compatible servers (Ollama) number every parallel call 0 and tell them apart by id.
    def chunk(tool_call: dict[str, Any]) -> str:
        return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [tool_call]}}]})

    body = sse(
        [
            chunk({"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}),
            chunk({"index": 0, "id": "b", "function": {"name": "g", "arguments": "{"}}),
            chunk({"index": 0, "function": {"arguments": "}"}}),
            'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
            "data: [DONE]",
        ]
    )
    outcome = await collect(scripted(OpenAIProvider, body))
    assert outcome.events[:-1] == [
        ToolCallDelta(0, "a", "f", "{}"),
        ToolCallDelta(1, "b", "g", "{"),
        ToolCallDelta(1, arguments="}"),
    ]


def test_anthropic_sends_tool_use_and_tool_result_blocks_merged_with_user_turns() -> None:
    body = anthropic.request_body(request(tools=(WEATHER,), tool_choice=ToolChoice(ToolMode.REQUIRED)))
    assert body["tools"] == [{"name": "get_weather", "description": "The weather", "input_schema": json.loads(SCHEMA)}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "cold"},
            {"type": "text", "text": "and tomorrow?"},
        ],
    }


@pytest.mark.parametrize(
    ("tools", "choice", "expected"),
    [
        ((), None, {"type": "tool", "name": "card"}),
        ((WEATHER,), None, {"type": "any"}),
        ((WEATHER,), ToolChoice(ToolMode.NONE), {"type": "tool", "name": "card"}),
    ],
    ids=["alone", "beside-tools", "tools-off"],
)
def test_anthropic_asks_for_json_with_a_forced_output_tool(
    tools: tuple[Tool, ...], choice: ToolChoice | None, expected: dict[str, str]
) -> None:
    fmt = ResponseFormat(OutputFormat.JSON_SCHEMA, "card", SCHEMA)
    body = anthropic.request_body(request(tools=tools, tool_choice=choice, response_format=fmt))
    assert body["tools"][-1]["name"] == "card"
    assert body["tools"][-1]["input_schema"] == json.loads(SCHEMA)
    assert body["tool_choice"] == expected


def test_gemini_sends_function_calls_and_responses_and_its_schema_subset() -> None:
    body = gemini.request_body(request(tools=(WEATHER,), tool_choice=ToolChoice(ToolMode.NAMED, "get_weather")))
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"nullable": True, "type": "STRING"}}},
                }
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {"text": "Looking."},
            # A call Gemini did not sign (this history is the client's): Google's documented placeholder.
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                "thoughtSignature": "skip_thought_signature_validator",
            },
        ],
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"result": "cold"}}},
            {"text": "and tomorrow?"},
        ],
    }


def test_gemini_json_output_is_a_mime_type_and_a_response_schema() -> None:
    fmt = ResponseFormat(OutputFormat.JSON_SCHEMA, "card", SCHEMA)
    config = gemini.request_body(request(response_format=fmt))["generationConfig"]
    assert config == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"city": {"nullable": True, "type": "STRING"}}},
    }
