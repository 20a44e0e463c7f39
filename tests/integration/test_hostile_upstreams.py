"""A real `python -m server` in front of an upstream written to misbehave (tests/fakes/hostile_upstream.py),
for all three wire formats: every misbehaviour becomes its documented status, reason and metadata, after
exactly what the client had received, and the access log records the code the client got. Floods assert
that the gateway stopped reading near its limit, not at the end of an endless body.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2_grpc as pb_grpc
from tests.fakes.hostile_upstream import FLOOD_CHUNK, HostileUpstream
from tests.process import GatewayProcess, run_gateway
from tests.rpc import collect_stream, detail, error_info, request, rich_status, unary_request

pytestmark = pytest.mark.asyncio

KINDS = ("openai", "anthropic", "gemini")
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_EVENT_BYTES = 4 * 1024 * 1024
# What the kernel's socket buffers on both sides may hold beyond what the gateway read: generous, and still
# a small fraction of the 1 GiB a flood would write to a gateway that never stops reading.
SOCKET_SLACK = 48 * 1024 * 1024


@dataclass
class Gateway:
    process: GatewayProcess
    stub: pb_grpc.AIServiceAsyncStub
    upstream: HostileUpstream


def config_text(upstream: HostileUpstream, scenarios: tuple[str, ...]) -> str:
    base = upstream.base_url
    # Named apart from the presets (openai, anthropic, gemini), which would want their keys.
    providers = [
        f"  - {{name: up_openai, kind: openai, base_url: '{base}/v1', max_response_bytes: {MAX_RESPONSE_BYTES}}}",
        f"  - {{name: up_openai_httpx, kind: openai, base_url: '{base}/v1', transport: httpx, "
        f"max_response_bytes: {MAX_RESPONSE_BYTES}}}",
        f"  - {{name: up_anthropic, kind: anthropic, base_url: '{base}', max_response_bytes: {MAX_RESPONSE_BYTES}}}",
        f"  - {{name: up_gemini, kind: gemini, base_url: '{base}', max_response_bytes: {MAX_RESPONSE_BYTES}}}",
    ]
    models = [
        f"  - {{name: {provider}-{scenario}, provider: up_{provider}, upstream_model: {scenario}}}"
        for provider in ("openai", "openai_httpx", "anthropic", "gemini")
        for scenario in scenarios
    ]
    return "\n".join(
        ["listen: 127.0.0.1:0", "retry: {max_attempts: 1}", "providers:", *providers, "models:", *models, ""]
    )


@contextlib.asynccontextmanager
async def gateway_before(tmp_path: Path, *scenarios: str) -> AsyncIterator[Gateway]:
    async with HostileUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(config_text(upstream, scenarios))
        async with run_gateway("--config", str(config)) as process:
            address = await process.wait_ready()
            async with grpc.aio.insecure_channel(address) as channel:
                yield Gateway(process, pb_grpc.AIServiceStub(channel), upstream)


@dataclass(frozen=True)
class Seen:
    """What a client saw of one call: its deltas (streams), then its status, reason and metadata."""

    deltas: list[str]
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    retry_delay_s: float | None
    logged: str  # the call's access log line


async def call(gateway: Gateway, model: str, *, stream: bool) -> Seen:
    request_id = f"{model}-{'stream' if stream else 'unary'}"
    metadata = (("x-request-id", request_id),)
    deltas: list[str] = []
    if stream:
        outcome = await collect_stream(gateway.stub, request(model), metadata=metadata, timeout=60.0)
        deltas, error = outcome.deltas, outcome.error
    else:
        error = None
        try:
            await gateway.stub.Generate(unary_request(model), metadata=metadata, timeout=60.0)
        except grpc.aio.AioRpcError as exc:
            error = exc
    assert error is not None, f"{model} succeeded"
    info = error_info(error)
    retry = detail(rich_status(error), error_details_pb2.RetryInfo)
    # " request_id=": the access line's field (other lines end with "[request_id=…]"); no id here is the
    # start of another.
    await gateway.process.wait_for_line(f" request_id={request_id}")
    [logged] = [line for line in gateway.process.stderr.splitlines() if f" request_id={request_id}" in line]
    delay = retry.retry_delay.ToMilliseconds() / 1000 if retry is not None else None
    return Seen(deltas, error.code(), info.reason, dict(info.metadata), delay, logged)


def logged_as(seen: Seen) -> tuple[str, str]:
    found = re.search(r" code=(\S+)(?: reason=(\S+))?", seen.logged)
    assert found is not None, seen.logged
    return found[1], found[2] or ""


def assert_bad_response(seen: Seen, *, deltas: list[str], **metadata: str) -> None:
    assert (seen.deltas, seen.code, seen.reason) == (deltas, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_BAD_RESPONSE")
    assert {key: seen.metadata.get(key) for key in metadata} == metadata
    assert seen.metadata.get("deltas_sent") == (str(len(deltas)) if deltas else None)
    assert logged_as(seen) == ("UNAVAILABLE", "UPSTREAM_BAD_RESPONSE")


@pytest.mark.parametrize(
    ("scenario", "field_of"),
    [
        ("usage-big", {"openai": "completion_tokens", "anthropic": "output_tokens", "gemini": "candidatesTokenCount"}),
        ("usage-inf", {"openai": "completion_tokens", "anthropic": "output_tokens", "gemini": "candidatesTokenCount"}),
        ("usage-neg", {"openai": "completion_tokens", "anthropic": "output_tokens", "gemini": "candidatesTokenCount"}),
        ("usage-text", {"openai": "completion_tokens", "anthropic": "output_tokens", "gemini": "candidatesTokenCount"}),
    ],
)
async def test_a_token_count_out_of_range_is_a_bad_response_and_logged_as_one(
    tmp_path: Path, scenario: str, field_of: dict[str, str]
) -> None:
    async with gateway_before(tmp_path, scenario) as gateway:
        for kind in KINDS:
            model = f"{kind}-{scenario}"
            expected = {"limit": "token_count", "field": field_of[kind], "limit_max": "2147483647"}
            assert_bad_response(await call(gateway, model, stream=False), deltas=[], **expected)
            assert_bad_response(await call(gateway, model, stream=True), deltas=["hi"], **expected)


async def test_json_nested_100000_deep_is_a_bad_response_and_in_an_error_body_keeps_its_status(
    tmp_path: Path,
) -> None:
    async with gateway_before(tmp_path, "deep-event", "deep-429", "deep-500") as gateway:
        for kind in KINDS:
            unary = await call(gateway, f"{kind}-deep-event", stream=False)
            assert_bad_response(unary, deltas=[], limit="json_depth")
            streamed = await call(gateway, f"{kind}-deep-event", stream=True)
            assert_bad_response(streamed, deltas=["hi"], limit="json_depth")
            for scenario, code, reason in [
                ("deep-429", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
                ("deep-500", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
            ]:
                for stream in (False, True):
                    seen = await call(gateway, f"{kind}-{scenario}", stream=stream)
                    assert (seen.deltas, seen.code, seen.reason) == ([], code, reason)
                    assert seen.metadata["upstream_http_status"] == scenario[-3:]
                    assert logged_as(seen) == (code.name, reason)


async def test_a_retry_after_that_is_not_a_sane_number_is_clamped_or_ignored_never_unknown(tmp_path: Path) -> None:
    delays = {"retry-inf": None, "retry-nan": None, "retry-huge": 86400.0, "retry-ms-huge": 86400.0}
    async with gateway_before(tmp_path, *delays) as gateway:
        for scenario, delay in delays.items():
            for stream in (False, True):
                seen = await call(gateway, f"openai-{scenario}", stream=stream)
                assert (seen.deltas, seen.code, seen.reason) == (
                    [],
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "UPSTREAM_RATE_LIMITED",
                )
                assert seen.retry_delay_s == delay
                assert logged_as(seen) == ("RESOURCE_EXHAUSTED", "UPSTREAM_RATE_LIMITED")


@pytest.mark.parametrize("provider", ["openai", "openai_httpx"])
async def test_compressed_answers_are_refused_and_a_compressed_error_keeps_its_status(
    tmp_path: Path, provider: str
) -> None:
    async with gateway_before(tmp_path, "gzip", "gzip-500") as gateway:
        for stream in (False, True):
            refused = await call(gateway, f"{provider}-gzip", stream=stream)
            assert_bad_response(
                refused, deltas=[], limit="content_encoding", content_encoding="gzip", accepted_encoding="identity"
            )
            failed = await call(gateway, f"{provider}-gzip-500", stream=stream)
            assert (failed.code, failed.reason, failed.metadata["upstream_http_status"]) == (
                grpc.StatusCode.UNAVAILABLE,
                "UPSTREAM_UNAVAILABLE",
                "500",
            )


@pytest.mark.parametrize("provider", ["openai", "openai_httpx"])
async def test_floods_stop_at_the_limit_each_as_its_documented_error(tmp_path: Path, provider: str) -> None:
    async with gateway_before(tmp_path, "body-flood", "event-flood", "error-flood") as gateway:
        upstream = gateway.upstream

        body = await call(gateway, f"{provider}-body-flood", stream=False)
        assert_bad_response(body, deltas=[], limit="max_response_bytes", limit_bytes=str(MAX_RESPONSE_BYTES))

        event = await call(gateway, f"{provider}-event-flood", stream=True)
        assert_bad_response(event, deltas=["hi"], limit="max_sse_event_bytes", limit_bytes=str(MAX_EVENT_BYTES))

        error = await call(gateway, f"{provider}-error-flood", stream=False)
        assert (error.code, error.reason, error.metadata["upstream_http_status"]) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            "500",
        )
        for scenario, limit in [
            ("body-flood", MAX_RESPONSE_BYTES),
            ("event-flood", MAX_EVENT_BYTES),
            ("error-flood", 64 * 1024),
        ]:
            await upstream.flood_ended(scenario).wait()  # the gateway hung up
            assert limit <= upstream.flooded[scenario] + FLOOD_CHUNK
            assert upstream.flooded[scenario] <= limit + SOCKET_SLACK
