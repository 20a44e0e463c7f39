"""The clients expose the gateway's rate-limit trailers (`rate_limits`), and an InteractiveStream turn's
RateLimits, and send the end user a call is for."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

import pytest

from client import AIClient, AsyncAIClient, RateLimitError, RateLimits
from client.wire import rate_limits, turn_rate_limits
from generated import ai_service_pb2 as pb
from server.config import ClientConfig, ClientLimits
from tests.conftest import GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream

TOKEN = "rate-limited-token-0123456789"


@pytest.fixture
async def target(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> str:
    limits = ClientLimits(requests_per_minute=4, tokens_per_minute=10_000)
    client = ClientConfig("app", tokens=(hashlib.sha256(TOKEN.encode()).digest(),), limits=limits)
    gateway = await make_gateway(replace(openai_config(fake_openai.base_url), clients=(client,)))
    return f"127.0.0.1:{gateway.port}"


async def test_async_results_and_streams_carry_the_limits_left(target: str, fake_openai: FakeOpenAIUpstream) -> None:
    async with AsyncAIClient(target=target, plaintext=True, token=TOKEN, retry=None) as client:
        result = await client.generate("hello brave world", model="gpt-test", max_tokens=10, end_user="u-7")
        async with client.stream_generate("hello", model="gpt-test") as stream:
            before_the_end = stream.rate_limits
            events = [event async for event in stream]

    assert result.rate_limits is not None
    assert (result.rate_limits.limit_requests, result.rate_limits.remaining_requests) == (4, 3)
    assert result.rate_limits.reset_requests_s is not None
    assert 14 < result.rate_limits.reset_requests_s <= 15  # one request back every 15 s
    assert (result.rate_limits.limit_tokens, result.rate_limits.remaining_tokens) == (10_000, 10_000 - 15)
    assert len(events) == 2
    assert before_the_end is None
    assert stream.rate_limits is not None
    assert stream.rate_limits.remaining_requests == 2
    assert [r.body.get("user") for r in fake_openai.requests] == ["app:u-7", "app"]


async def test_the_blocking_client_too_and_a_refusal_is_a_rate_limit_error(target: str) -> None:
    def calls() -> tuple[RateLimits | None, RateLimits | None, RateLimitError]:
        with AIClient(target=target, plaintext=True, token=TOKEN, retry=None) as client:
            first = client.generate("hello", model="gpt-test").rate_limits
            with client.stream_generate("hello", model="gpt-test") as stream:
                list(stream)
            for _ in range(2):
                client.generate("hello", model="gpt-test")
            with pytest.raises(RateLimitError) as refused:
                client.generate("hello", model="gpt-test")
            return first, stream.rate_limits, refused.value

    first, streamed, refused = await asyncio.to_thread(calls)

    assert first is not None
    assert first.remaining_requests == 3
    assert streamed is not None
    assert streamed.remaining_requests == 2
    assert (refused.reason, refused.metadata["limit"]) == ("QUOTA_EXCEEDED", "requests_per_minute")
    assert refused.retry_after is not None
    assert 0 < refused.retry_after <= 15


async def test_a_turn_result_carries_the_limits_left_as_a_call_result_does(target: str) -> None:
    async with (
        AsyncAIClient(target=target, plaintext=True, token=TOKEN, retry=None) as client,
        client.interactive(model="gpt-test") as session,
    ):
        first = await session.send("hello brave world")
        second = await session.send("again")
    after_a_call = await _generate_limits(target)

    assert first.rate_limits is not None
    assert (first.rate_limits.limit_requests, first.rate_limits.remaining_requests) == (4, 3)
    assert first.rate_limits.reset_requests_s == 15.0  # one request back every 15 s
    assert first.rate_limits.limit_tokens == 10_000
    assert first.rate_limits.remaining_tokens == 10_000 - 5  # "hello brave world": about 5 tokens
    assert first.rate_limits.reset_tokens_s == 0.03
    assert second.rate_limits is not None
    assert second.rate_limits.remaining_requests == 2
    # The same type, from the same numbers, as a Generate call's trailers give.
    assert type(after_a_call) is RateLimits
    assert after_a_call.remaining_requests == 1


async def _generate_limits(target: str) -> RateLimits | None:
    async with AsyncAIClient(target=target, plaintext=True, token=TOKEN, retry=None) as client:
        return (await client.generate("hello", model="gpt-test")).rate_limits


def test_turn_rate_limits_leaves_out_the_limits_not_sent() -> None:
    limits = pb.RateLimits(remaining_tokens=0)
    limits.reset_tokens.FromMilliseconds(17)

    assert turn_rate_limits(limits) == RateLimits(remaining_tokens=0, reset_tokens_s=0.017)
    assert turn_rate_limits(pb.RateLimits()) == RateLimits()


@pytest.mark.parametrize(
    ("trailers", "expected"),
    [
        ((), None),
        ((("x-request-id", "r1"),), None),
        (
            (
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "59"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-limit-tokens", "150000"),
                ("x-ratelimit-remaining-tokens", "149984"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ),
            RateLimits(60, 59, 1.0, 150000, 149984, 360.0),
        ),
        ((("x-ratelimit-reset-tokens", "17ms"),), RateLimits(reset_tokens_s=0.017)),
        ((("x-ratelimit-reset-tokens", "1h2m3.5s"),), RateLimits(reset_tokens_s=3723.5)),
        ((("x-ratelimit-remaining-tokens", "-1"), ("x-ratelimit-reset-tokens", "soon")), RateLimits()),
    ],
)
def test_rate_limits_from_trailers(trailers: tuple[tuple[str, str], ...], expected: RateLimits | None) -> None:
    assert rate_limits(trailers) == expected
