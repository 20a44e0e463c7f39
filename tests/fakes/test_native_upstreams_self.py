"""Self-tests for the fake Anthropic and Gemini upstreams: their bytes and their refusals, seen with httpx."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from .anthropic_upstream import MESSAGES_PATH, FakeAnthropicUpstream, thinking_signature
from .gemini_upstream import FakeGeminiUpstream, thought_signature

KEY = "test-key-0123456789"
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def _messages(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hello world foo"}], **extra}


def _contents(**extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "hello world foo"}]}], **extra}


async def test_anthropic_stream_events_in_order() -> None:
    async with (
        FakeAnthropicUpstream(api_key=KEY) as up,
        httpx.AsyncClient(base_url=up.base_url, headers=ANTHROPIC_HEADERS) as c,
    ):
        r = await c.post(MESSAGES_PATH, json=_messages("echo", stream=True))
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    blocks = r.content.decode().split("\n\n")
    assert blocks[-1] == ""
    names = [block.split("\n")[0] for block in blocks[:-1]]
    assert names == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        *["event: content_block_delta"] * 3,
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]
    data = [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in blocks[:-1]]
    assert [d["type"] for d in data] == [name.removeprefix("event: ") for name in names]
    assert data[0]["message"]["usage"]["input_tokens"] == 3
    assert "".join(d["delta"]["text"] for d in data[3:6]) == "hello world foo"
    assert data[7]["delta"]["stop_reason"] == "end_turn"
    assert data[7]["usage"] == {"output_tokens": 3}


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({"anthropic-version": "2023-06-01"}, _messages("echo"), 401, "x-api-key header is required"),
        ({"x-api-key": "nope", "anthropic-version": "2023-06-01"}, _messages("echo"), 401, "invalid x-api-key"),
        ({"x-api-key": KEY}, _messages("echo"), 400, "anthropic-version: header is required"),
        (ANTHROPIC_HEADERS, {"model": "echo", "messages": []}, 400, "max_tokens: Field required"),
        (ANTHROPIC_HEADERS, _messages("echo", stop=["x"]), 400, "stop: Extra inputs are not permitted"),
        (
            ANTHROPIC_HEADERS,
            {"model": "echo", "max_tokens": 9, "messages": [{"role": "system", "content": "x"}]},
            400,
            'Unexpected role "system"',
        ),
        (ANTHROPIC_HEADERS, _messages("fault-typo"), 404, "model: fault-typo"),
    ],
)
async def test_anthropic_refuses_what_the_api_refuses(
    headers: dict[str, str], body: dict[str, Any], status: int, message: str
) -> None:
    async with FakeAnthropicUpstream(api_key=KEY) as up, httpx.AsyncClient(base_url=up.base_url) as c:
        r = await c.post(MESSAGES_PATH, json=body, headers=headers)
    assert r.status_code == status
    error = r.json()
    assert error["type"] == "error"
    assert message in error["error"]["message"]
    assert error["request_id"].startswith("req_")
    assert error["request_id"] == r.headers["request-id"] == up.response_ids[-1], "one id, as Anthropic sends it"


async def test_anthropic_names_every_answer_in_its_request_id_header() -> None:
    async with (
        FakeAnthropicUpstream() as up,
        httpx.AsyncClient(base_url=up.base_url, headers=ANTHROPIC_HEADERS) as c,
    ):
        streamed = await c.post(MESSAGES_PATH, json={**_messages("echo"), "stream": True})
        whole = await c.post(MESSAGES_PATH, json=_messages("echo"))
    ids = [streamed.headers["request-id"], whole.headers["request-id"]]
    assert ids == up.response_ids
    assert all(re.fullmatch(r"req_011C[0-9a-f]{22}", answer_id) for answer_id in ids)


async def test_anthropic_overloaded_is_529() -> None:
    async with (
        FakeAnthropicUpstream() as up,
        httpx.AsyncClient(base_url=up.base_url, headers=ANTHROPIC_HEADERS) as c,
    ):
        r = await c.post(MESSAGES_PATH, json=_messages("fault-529"))
        whole = await c.post(MESSAGES_PATH, json=_messages("fault-inband-error-after"))
    assert r.status_code == whole.status_code == 529
    assert r.json()["error"]["type"] == "overloaded_error"


async def test_gemini_stream_uses_crlf_and_has_no_end_event() -> None:
    async with (
        FakeGeminiUpstream(api_key=KEY) as up,
        httpx.AsyncClient(base_url=up.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        r = await c.post("/v1beta/models/gemini-test:streamGenerateContent?alt=sse", json=_contents())
    raw = r.content
    assert r.headers["content-type"] == "text/event-stream"
    assert raw.endswith(b"\r\n\r\n")
    events = raw.split(b"\r\n\r\n")[:-1]
    assert len(events) == 4
    assert all(e.startswith(b"data: {") and b"\n" not in e for e in events)
    chunks = [json.loads(e[len(b"data: ") :]) for e in events]
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks] == ["hello", " world", " foo", ""]
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None, None, None, "STOP"]
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 3
    assert b'"candidates": [{"content": {"parts": [{"text": "hello"}],"role": "model"}' in events[0]
    assert {c["responseId"] for c in chunks} == set(up.response_ids), "one answer, one responseId"
    assert "request-id" not in r.headers
    assert "x-request-id" not in r.headers


@pytest.mark.parametrize(
    ("target", "headers", "body", "status", "message"),
    [
        (f"/v1beta/models/g:generateContent?key={KEY}", {"x-goog-api-key": KEY}, _contents(), 400, "in the URL"),
        ("/v1beta/models/g:generateContent", {}, _contents(), 403, "unregistered callers"),
        ("/v1beta/models/g:generateContent", {"x-goog-api-key": "AIza-no"}, _contents(), 400, "API key not valid"),
        ("/v1beta/models/g:streamGenerateContent", {"x-goog-api-key": KEY}, _contents(), 400, "alt=sse"),
        (
            "/v1beta/models/g:generateContent",
            {"x-goog-api-key": KEY},
            _contents(generationConfig={"max_tokens": 5}),
            400,
            'Unknown name "max_tokens"',
        ),
        (
            "/v1beta/models/g:generateContent",
            {"x-goog-api-key": KEY},
            {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
            400,
            "valid role: user, model",
        ),
        ("/v1beta/models/fault-typo:generateContent", {"x-goog-api-key": KEY}, _contents(), 404, "not found"),
    ],
)
async def test_gemini_refuses_what_the_api_refuses(
    target: str, headers: dict[str, str], body: dict[str, Any], status: int, message: str
) -> None:
    async with FakeGeminiUpstream(api_key=KEY) as up, httpx.AsyncClient(base_url=up.base_url) as c:
        r = await c.post(target, json=body, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    error = r.json()["error"]
    assert error["code"] == status
    assert message in error["message"]
    assert up.keys_in_url == (1 if "key=" in target else 0)


async def test_gemini_rate_limit_says_when_in_retry_info_not_in_a_header() -> None:
    async with FakeGeminiUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        r = await c.post("/v1beta/models/fault-429:generateContent", json=_contents())
    assert r.status_code == 429
    assert "retry-after" not in r.headers
    details = r.json()["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in details


THINKING = {"type": "enabled", "budget_tokens": 1024}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
TOOL_RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}]}


def _round_trip(*assistant_blocks: dict[str, Any]) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": "get_weather"},
        {"role": "assistant", "content": [*assistant_blocks, TOOL_USE]},
        TOOL_RESULT,
    ]
    return {"model": "echo", "max_tokens": 2000, "thinking": THINKING, "messages": messages}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_round_trip(), "a final `assistant` message must start with a thinking block"),
        (
            _round_trip({"type": "thinking", "thinking": "altered", "signature": thinking_signature("original")}),
            "messages.1.content.0: Invalid `signature` in `thinking` block",
        ),
        (
            _round_trip({"type": "redacted_thinking", "data": "bm90IG1pbmU="}),
            "messages.1.content.0: Invalid `data` in `redacted_thinking` block",
        ),
        (
            _messages(
                "echo",
                system=[
                    {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                ],
            ),
            "cache entries with a longer TTL must appear before shorter ones",
        ),
    ],
)
async def test_anthropic_refuses_altered_or_missing_thinking_and_a_1h_breakpoint_after_a_5m_one(
    body: dict[str, Any], message: str
) -> None:
    async with FakeAnthropicUpstream(api_key=KEY) as up, httpx.AsyncClient(base_url=up.base_url) as c:
        r = await c.post(MESSAGES_PATH, json=body, headers=ANTHROPIC_HEADERS)
        thought = "Thinking about: cold"
        signed = _round_trip({"type": "thinking", "thinking": thought, "signature": thinking_signature(thought)})
        accepted = await c.post(MESSAGES_PATH, json=signed, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 400
    assert message in r.json()["error"]["message"]
    assert accepted.status_code == 200


def _gemini_round_trip(signature: str | None) -> dict[str, Any]:
    call: dict[str, Any] = {"functionCall": {"name": "get_weather", "args": {"text": "x"}}}
    if signature is not None:
        call["thoughtSignature"] = signature
    return {
        "contents": [
            {"role": "user", "parts": [{"text": "get_weather"}]},
            {"role": "model", "parts": [call]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "cold"}}}]},
        ],
        "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}},
    }


@pytest.mark.parametrize(
    ("signature", "status", "message"),
    [
        (None, 400, "Function call `get_weather` in the `1.` content block is missing a `thought_signature`."),
        ("Q29ycnVwdGVk", 400, "Corrupted thought signature."),
        ("not base64!", 400, "Base64 decoding failed"),
        ("skip_thought_signature_validator", 200, ""),
        (thought_signature('get_weather:{"text":"x"}'), 200, ""),
    ],
)
async def test_gemini_checks_the_current_turns_thought_signatures(
    signature: str | None, status: int, message: str
) -> None:
    async with FakeGeminiUpstream(api_key=KEY) as up, httpx.AsyncClient(base_url=up.base_url) as c:
        r = await c.post(
            "/v1beta/models/echo:generateContent", json=_gemini_round_trip(signature), headers={"x-goog-api-key": KEY}
        )
    assert r.status_code == status
    if message:
        assert message in r.json()["error"]["message"]
