"""The Gemini adapter: what the Generative Language API receives, and how its answers become neutral events."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from server.config import ProviderConfig
from server.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from server.providers import build_provider
from server.providers.gemini import GeminiProvider, request_body
from server.types import FinishReason, Role, Usage
from tests.fakes.gemini_upstream import FakeGeminiUpstream
from tests.mock_upstream import chat, collect, scripted, sse

KEY = "AIzaSy-test-0123456789abcdefghij"
S, U, A = Role.SYSTEM, Role.USER, Role.ASSISTANT


def test_roles_system_instruction_and_merged_turns() -> None:
    body = request_body(chat((S, "be brief"), (U, "hi"), (U, "again"), (A, "hello"), (S, "be kind"), (U, "bye")))
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "bye"}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}, {"text": "be kind"}]},
    }


def test_generation_config_holds_only_what_was_set() -> None:
    assert "generationConfig" not in request_body(chat((U, "hi")))
    body = request_body(chat((U, "hi"), temperature=0.0, top_p=0.5, max_tokens=50, stop=("END",)))
    assert body["generationConfig"] == {
        "temperature": 0.0,
        "topP": 0.5,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
    }


async def test_the_key_travels_in_a_header_and_never_in_the_url() -> None:
    async with FakeGeminiUpstream(api_key=KEY) as fake:
        provider = build_provider(ProviderConfig(name="g", kind="gemini", base_url=fake.base_url, api_key=KEY))
        assert isinstance(provider, GeminiProvider)
        streamed = await collect(provider, chat((S, "be brief"), (U, "hello brave world"), max_tokens=2))
        provider = build_provider(ProviderConfig(name="g", kind="gemini", base_url=fake.base_url, api_key=KEY))
        completion = await provider.complete(chat((U, "hello brave world")))
        await provider.aclose()
    assert "".join(streamed.text) == "hello brave"
    assert streamed.finish.reason is FinishReason.LENGTH
    assert completion.text == "hello brave world"
    stream_request, unary_request = fake.requests
    assert (stream_request.method, stream_request.path) == (
        "POST",
        "/v1beta/models/model-x:streamGenerateContent?alt=sse",
    )
    assert unary_request.path == "/v1beta/models/model-x:generateContent"
    for sent in fake.requests:
        assert sent.headers["x-goog-api-key"] == KEY
        assert KEY not in sent.path
        assert "key=" not in sent.path
        assert "authorization" not in sent.headers
    assert fake.keys_in_url == 0
    assert stream_request.body == {
        "contents": [{"role": "user", "parts": [{"text": "hello brave world"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 2},
    }


async def test_a_model_name_cannot_leave_the_models_path() -> None:
    async with FakeGeminiUpstream() as fake:
        provider = build_provider(ProviderConfig(name="g", kind="gemini", base_url=fake.base_url))
        await collect(provider, replace(chat(), model="../files/x"))
    assert fake.requests[0].path == "/v1beta/models/..%2Ffiles%2Fx:streamGenerateContent?alt=sse"


async def test_a_wrong_key_answered_with_400_is_an_auth_failure_and_no_key_a_403() -> None:
    async with FakeGeminiUpstream(api_key=KEY) as fake:
        wrong = build_provider(ProviderConfig(name="g", kind="gemini", base_url=fake.base_url, api_key="AIza-wrong"))
        keyless = build_provider(ProviderConfig(name="g", kind="gemini", base_url=fake.base_url))
        mistaken, missing = await collect(wrong), await collect(keyless)
    assert isinstance(mistaken.error, UpstreamAuthFailed)
    assert mistaken.error.metadata["upstream_error_type"] == "API_KEY_INVALID"
    assert mistaken.error.http_status == 400
    assert isinstance(missing.error, UpstreamAuthFailed)
    assert missing.error.http_status == 403


def response(*parts: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate]}
    if usage:
        body["usageMetadata"] = usage
    return "data: " + json.dumps(body, separators=(",", ": "))


USAGE = {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}


async def test_thoughts_are_not_text_but_count_as_completion_tokens() -> None:
    body = sse(
        [
            response({"text": "thinking about it", "thought": True}),
            response({"text": "Hel"}, {"text": "lo"}),
            response(
                {"text": "!"},
                finish="STOP",
                usage={**USAGE, "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 5, "totalTokenCount": 41},
            ),
        ],
        line_end="\r\n",
    )
    outcome = await collect(scripted(GeminiProvider, body))
    assert outcome.text == ["Hello!"]  # the two events with text came in one read: one delta
    assert outcome.finish.reason is FinishReason.STOP
    assert outcome.finish.usage == Usage(9, 32, 41, reasoning_tokens=30)


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("LANGUAGE", FinishReason.UNSPECIFIED),
        ("OTHER", FinishReason.UNSPECIFIED),
        ("MALFORMED_FUNCTION_CALL", FinishReason.UNSPECIFIED),
    ],
)
async def test_finish_reasons(finish: str, reason: FinishReason) -> None:
    outcome = await collect(scripted(GeminiProvider, sse([response({"text": "x"}, finish=finish)])))
    assert outcome.finish.reason is reason
    assert outcome.finish.usage is None  # no usageMetadata: unreported, never zeros


async def test_a_blocked_prompt_ends_with_content_filter_and_no_text() -> None:
    blocked = 'data: {"promptFeedback": {"blockReason": "SAFETY"},"usageMetadata": {"promptTokenCount": 7}}'
    outcome = await collect(scripted(GeminiProvider, sse([blocked])))
    assert outcome.text == []
    assert outcome.finish.reason is FinishReason.CONTENT_FILTER
    assert outcome.finish.usage == Usage(7, 0, 7)


async def test_a_body_that_ends_before_a_finish_reason_is_an_interrupted_stream() -> None:
    outcome = await collect(scripted(GeminiProvider, sse([response({"text": "x"}, usage=USAGE)])))
    assert outcome.text == ["x"]
    assert isinstance(outcome.error, UpstreamUnavailable)
    assert outcome.error.reason == "UPSTREAM_STREAM_INTERRUPTED"


async def test_malformed_usage_is_a_bad_response() -> None:
    body = sse([response({"text": "x"}, finish="STOP", usage={"promptTokenCount": "many"})])  # type: ignore[dict-item]
    outcome = await collect(scripted(GeminiProvider, body))
    assert outcome.error is not None
    assert outcome.error.reason == "UPSTREAM_BAD_RESPONSE"


@pytest.mark.parametrize("line_end", ["\r\n", "\n"])
async def test_a_crlf_event_stream_split_into_single_bytes_decodes_the_same(line_end: str) -> None:
    body = sse(
        [response({"text": "naïve"}), response({"text": " café"}, finish="STOP", usage=USAGE)], line_end=line_end
    )
    outcome = await collect(scripted(GeminiProvider, body, split=True))
    assert outcome.text == ["naïve", " café"]
    assert outcome.finish.usage == Usage(4, 2, 6)


def in_band(status: str, code: int, **extra: Any) -> str:
    return "data: " + json.dumps({"error": {"code": code, "message": f"{KEY} failed", "status": status, **extra}})


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        ("UNAVAILABLE", 503, UpstreamUnavailable),
        ("INTERNAL", 500, UpstreamUnavailable),
        ("RESOURCE_EXHAUSTED", 429, UpstreamRateLimited),
        ("INVALID_ARGUMENT", 400, UpstreamRejected),
        ("PERMISSION_DENIED", 403, UpstreamAuthFailed),
        ("NOT_FOUND", 404, UpstreamFailed),
    ],
)
async def test_in_band_errors_by_canonical_status(status: str, code: int, kind: type[UpstreamError]) -> None:
    outcome = await collect(scripted(GeminiProvider, sse([response({"text": "x"}), in_band(status, code)])))
    assert outcome.text == ["x"]
    assert type(outcome.error) is kind
    assert outcome.error.metadata["upstream_error_type"] == status
    assert KEY not in str(outcome.error)


RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}


async def test_an_in_band_rate_limit_keeps_its_retry_delay() -> None:
    body = sse([in_band("RESOURCE_EXHAUSTED", 429, details=[RETRY_INFO])])
    outcome = await collect(scripted(GeminiProvider, body))
    assert isinstance(outcome.error, UpstreamRateLimited)
    assert outcome.error.retry_after_s == 2.5


def error_body(status: str, code: int, *details: dict[str, Any], wrap: bool = False) -> bytes:
    error = {"error": {"code": code, "message": "no", "status": status, "details": list(details)}}
    return json.dumps([error] if wrap else error).encode()


@pytest.mark.parametrize(
    ("headers", "wrap", "retry_after_s"),
    [
        ({}, False, 2.5),  # RetryInfo in the body
        ({}, True, 2.5),  # the body wrapped in a JSON array, as Google's non-SSE streams send it
        ({"retry-after": "9"}, False, 9.0),  # a Retry-After header wins
    ],
)
async def test_retry_info_in_the_error_body(headers: dict[str, str], wrap: bool, retry_after_s: float) -> None:
    body = error_body("RESOURCE_EXHAUSTED", 429, RETRY_INFO, wrap=wrap)
    outcome = await collect(scripted(GeminiProvider, body, status=429, headers=headers))
    assert isinstance(outcome.error, UpstreamRateLimited)
    assert outcome.error.retry_after_s == retry_after_s


async def test_an_invalid_argument_is_the_clients_problem_unless_the_key_is_invalid() -> None:
    key_info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    invalid = await collect(scripted(GeminiProvider, error_body("INVALID_ARGUMENT", 400), status=400))
    bad_key = await collect(scripted(GeminiProvider, error_body("INVALID_ARGUMENT", 400, key_info), status=400))
    assert type(invalid.error) is UpstreamRejected
    assert invalid.error.metadata["upstream_error_type"] == "INVALID_ARGUMENT"
    assert type(bad_key.error) is UpstreamAuthFailed


async def test_complete_reads_one_whole_response() -> None:
    payload = response({"text": "Hi"}, {"text": " there"}, finish="MAX_TOKENS", usage=USAGE)[len("data: ") :]
    completion = await scripted(GeminiProvider, payload.encode()).complete(chat())
    assert (completion.text, completion.reason, completion.usage) == ("Hi there", FinishReason.LENGTH, Usage(4, 2, 6))


async def test_complete_with_a_blocked_prompt_is_an_empty_content_filter_reply() -> None:
    completion = await scripted(GeminiProvider, b'{"promptFeedback": {"blockReason": "OTHER"}}').complete(chat())
    assert (completion.text, completion.reason, completion.usage) == ("", FinishReason.CONTENT_FILTER, None)
