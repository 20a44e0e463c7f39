"""Self-tests for the fake Anthropic and Gemini upstreams: their bytes and their refusals, seen with httpx."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from .anthropic_upstream import MESSAGES_PATH, FakeAnthropicUpstream
from .gemini_upstream import FakeGeminiUpstream

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
