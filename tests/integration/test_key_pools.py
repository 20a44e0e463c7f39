"""Upstream key pools and request signing, through a real `python -m server` and the byte-exact fakes.

A provider with `api_key_env: [A, B]` uses its keys in turn: a key the upstream refuses is set aside and the
same call goes on with the next one; a key the upstream rate limits rests for its Retry-After. A provider
with `signing_secret_env` signs every request, and the fake upstream refuses a bad signature.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from tests.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.fakes.gemini_upstream import FakeGeminiUpstream
from tests.fakes.http_server import FakeHTTPServer
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import GatewayProcess, run_gateway
from tests.rpc import collect_stream, error_info, request, unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`

FAKES: dict[str, type[FakeHTTPServer]] = {
    "openai": FakeOpenAIUpstream,
    "anthropic": FakeAnthropicUpstream,
    "gemini": FakeGeminiUpstream,
}
GOOD_KEY = "sk-good-0123456789abcdef"
REVOKED_KEY = "sk-revoked-0123456789abcdef"
OTHER_GOOD_KEY = "sk-other-0123456789abcdef"
SIGNING_SECRET = "signing-secret-0123456789"
KEY_HEADERS = {"openai": "authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}


def write_config(tmp_path: Path, kind: str, base_url: str, provider_extra: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "retry: {max_attempts: 1}\n"  # one attempt per call: what is counted here is keys, not retries
        "providers:\n"
        f"  - {{name: fake, kind: {kind}, base_url: '{base_url}', {provider_extra}}}\n"
        "models:\n"
        "  - {name: m, provider: fake, upstream_model: tokens-3}\n"
        "  - {name: limited, provider: fake, upstream_model: fault-429}\n"
    )
    return path


@asynccontextmanager
async def gateway_for(
    config: Path, env: dict[str, str]
) -> AsyncIterator[tuple[GatewayProcess, pb_grpc.AIServiceAsyncStub]]:
    async with run_gateway("--config", str(config), env=env) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            yield gateway, pb_grpc.AIServiceStub(channel)


def keys_sent(fake: FakeHTTPServer, kind: str) -> list[str]:
    return [r.headers.get(KEY_HEADERS[kind], "").removeprefix("Bearer ") for r in fake.requests]


@pytest.mark.parametrize("kind", FAKES)
async def test_a_revoked_key_is_set_aside_and_the_same_call_goes_on_with_the_next(tmp_path: Path, kind: str) -> None:
    async with FAKES[kind](api_key=GOOD_KEY) as fake:
        config = write_config(tmp_path, kind, fake.base_url, "api_key_env: [KEY_A, KEY_B]")
        env = {"KEY_A": REVOKED_KEY, "KEY_B": GOOD_KEY}
        async with gateway_for(config, env) as (gateway, stub):
            first = await stub.Generate(unary_request("m"), timeout=30)
            streamed = await collect_stream(stub, request("m"), timeout=30)
            third = await stub.Generate(unary_request("m"), timeout=30)

        # The first call tried the revoked key, then the good one; every later call only the good one.
        assert keys_sent(fake, kind) == [REVOKED_KEY, GOOD_KEY, GOOD_KEY, GOOD_KEY]
        assert first.content
        assert third.content
        assert streamed.error is None
        assert streamed.finals
        # Named by its variable, never by its value.
        assert "rejected the key in KEY_A" in gateway.stderr
        assert "set aside" in gateway.stderr
        assert REVOKED_KEY not in gateway.stderr
        assert GOOD_KEY not in gateway.stderr


async def test_keys_are_used_in_turn(tmp_path: Path) -> None:
    async with FakeOpenAIUpstream(api_key=(GOOD_KEY, OTHER_GOOD_KEY)) as fake:
        config = write_config(tmp_path, "openai", fake.base_url, "api_key_env: [KEY_A, KEY_B]")
        async with gateway_for(config, {"KEY_A": GOOD_KEY, "KEY_B": OTHER_GOOD_KEY}) as (_, stub):
            for _ in range(4):
                await stub.Generate(unary_request("m"), timeout=30)

    assert keys_sent(fake, "openai") == [GOOD_KEY, OTHER_GOOD_KEY, GOOD_KEY, OTHER_GOOD_KEY]


async def test_a_rate_limited_key_rests_while_the_others_carry_on_and_then_the_call_fails_honestly(
    tmp_path: Path,
) -> None:
    async with FakeOpenAIUpstream(api_key=(GOOD_KEY, OTHER_GOOD_KEY)) as fake:
        fake.key_faults[GOOD_KEY] = "fault-429"  # Retry-After: 7
        config = write_config(tmp_path, "openai", fake.base_url, "api_key_env: [KEY_A, KEY_B]")
        async with gateway_for(config, {"KEY_A": GOOD_KEY, "KEY_B": OTHER_GOOD_KEY}) as (gateway, stub):
            carried_on = await stub.Generate(unary_request("m"), timeout=30)
            rested = await stub.Generate(unary_request("m"), timeout=30)
            assert keys_sent(fake, "openai") == [GOOD_KEY, OTHER_GOOD_KEY, OTHER_GOOD_KEY]

            fake.key_faults[OTHER_GOOD_KEY] = "fault-429"
            with pytest.raises(grpc.aio.AioRpcError) as last_key_limited:
                await stub.Generate(unary_request("m"), timeout=30)
            assert len(fake.requests) == 4  # B tried and answered 429; A still rests
            with pytest.raises(grpc.aio.AioRpcError) as every_key_resting:
                await stub.Generate(unary_request("m"), timeout=30)
            assert len(fake.requests) == 4  # nothing sent: every key rests

    assert carried_on.content
    assert rested.content
    assert last_key_limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(last_key_limited.value).reason == "UPSTREAM_RATE_LIMITED"
    assert every_key_resting.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    resting = error_info(every_key_resting.value)
    assert resting.reason == "UPSTREAM_RATE_LIMITED"
    assert resting.metadata["keys_resting"] == "2"
    assert "rate limiting every key" in (every_key_resting.value.details() or "")
    assert "rate limited the key in KEY_A: it rests 7.0 s" in gateway.stderr


@pytest.mark.parametrize("kind", FAKES)
async def test_signed_requests_are_accepted_and_a_wrong_secret_is_refused(tmp_path: Path, kind: str) -> None:
    async with FAKES[kind](api_key=GOOD_KEY, signing_secret=SIGNING_SECRET) as fake:
        config = write_config(tmp_path, kind, fake.base_url, "api_key_env: KEY, signing_secret_env: SIGNING")
        async with gateway_for(config, {"KEY": GOOD_KEY, "SIGNING": SIGNING_SECRET}) as (_, stub):
            reply = await stub.Generate(unary_request("m"), timeout=30)
            streamed = await collect_stream(stub, request("m"), timeout=30)
        async with gateway_for(config, {"KEY": GOOD_KEY, "SIGNING": "not-the-secret"}) as (gateway, stub):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Generate(unary_request("m"), timeout=30)

    assert reply.content
    assert streamed.error is None
    assert streamed.finals
    assert all("x-signature" in r.headers and r.headers["x-timestamp"].isdigit() for r in fake.requests)
    assert refused.value.code() == grpc.StatusCode.INTERNAL  # the operator must fix it, not the caller
    assert error_info(refused.value).reason == "UPSTREAM_AUTH_FAILED"
    assert "not-the-secret" not in gateway.stderr
    assert "not-the-secret" not in (refused.value.details() or "")
