"""Request ids: the caller's x-request-id (or a new one) in the headers, the trailers, ErrorInfo, the access
log and the upstream request; the upstream's own id of its answer in the access log and ErrorInfo."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.observe.request_id import MAX_REQUEST_ID_CHARS, valid_request_id
from tests.conftest import CLIENT_TOKEN, UPSTREAM_KEY, GatewayFactory, client_auth, openai_config
from tests.fakes.gemini_upstream import FakeGeminiUpstream
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.integration.test_conformance import FAKES, PROVIDERS, Upstream, conformance_config
from tests.interactive import Bidi
from tests.rpc import collect_stream, detail, error_info, request, stub_for, unary_request

Code = grpc.StatusCode
CALLER_ID = "ticket-4711.retry:2"


@pytest.fixture(params=PROVIDERS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    async with FAKES[request.param](api_key=UPSTREAM_KEY) as fake:
        yield Upstream(request.param, fake)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await make_gateway(conformance_config(upstream.kind, upstream.fake.base_url))


def header(metadata: object, key: str) -> list[str]:
    return [str(value) for k, value in metadata or () if k == key]  # type: ignore[attr-defined]


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server.access"]


def field(line: str, key: str) -> str:
    return line.split(f" {key}=")[1].split(" ")[0]


def upstream_id(upstream: Upstream, *, failed: bool = True) -> str:
    """The id the fake gave its last answer. Gemini names an answer only in its body (`responseId`), so a
    failed Gemini call has none."""
    if failed and isinstance(upstream.fake, FakeGeminiUpstream):
        return ""
    return upstream.fake.response_ids[-1]


async def test_the_callers_id_is_returned_logged_and_sent_upstream_with_the_upstreams_own(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(gateway) as stub:
        call = stub.StreamGenerate(request("echo", "one two"), metadata=(("x-request-id", CALLER_ID),), timeout=10)
        assert header(await call.initial_metadata(), "x-request-id") == [CALLER_ID], "before the first token"
        chunks = [chunk async for chunk in call]
        trailers = await call.trailing_metadata()

    assert "".join(c.delta for c in chunks) == "one two"
    assert header(trailers, "x-request-id") == [CALLER_ID]
    [sent] = upstream.fake.requests
    assert sent.headers["x-request-id"] == CALLER_ID
    [line] = access_lines(caplog)
    assert field(line, "request_id") == CALLER_ID
    assert field(line, "upstream_request_id") == upstream_id(upstream, failed=False)


async def test_a_failed_call_names_both_ids_in_its_error_info_and_its_trailers(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(gateway) as stub:
        call = stub.Generate(unary_request("fault-500"), metadata=(("x-request-id", CALLER_ID),), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call

    assert failed.value.code() == Code.UNAVAILABLE
    assert header(failed.value.initial_metadata(), "x-request-id") == [CALLER_ID]
    assert header(failed.value.trailing_metadata(), "x-request-id") == [CALLER_ID]
    info = error_info(failed.value)
    assert info.reason == "UPSTREAM_UNAVAILABLE"
    assert info.metadata["request_id"] == CALLER_ID
    expected = upstream_id(upstream)
    assert info.metadata.get("upstream_request_id", "") == expected
    [line] = access_lines(caplog)
    assert field(line, "upstream_request_id") == (expected or "-")


@pytest.mark.parametrize(
    ("model", "deltas"),
    [
        ("fault-429", 0),
        ("fault-inband-error-before", 0),
        ("fault-malformed", 0),
        ("fault-cut-mid", 2),
        ("fault-inband-error-after", 2),
    ],
)
async def test_every_failed_stream_ends_with_both_ids(
    gateway: Gateway, upstream: Upstream, model: str, deltas: int
) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request(model), metadata=(("x-request-id", CALLER_ID),))

    assert outcome.error is not None
    sent = error_info(outcome.error).metadata.get("deltas_sent", "0")  # the upstream's deltas, in fewer chunks
    assert (bool(outcome.deltas), sent) == (bool(deltas), str(deltas))
    assert header(outcome.error.trailing_metadata(), "x-request-id") == [CALLER_ID]
    info = error_info(outcome.error)
    assert info.metadata["request_id"] == CALLER_ID
    assert info.metadata.get("upstream_request_id", "") == upstream_id(upstream)


@pytest.mark.parametrize("model", ["fault-429", "fault-malformed", "fault-inband-error-before"])
async def test_every_failed_unary_call_ends_with_both_ids(gateway: Gateway, upstream: Upstream, model: str) -> None:
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(unary_request(model), metadata=(("x-request-id", CALLER_ID),), timeout=10)

    info = error_info(failed.value)
    assert info.metadata["request_id"] == CALLER_ID
    assert info.metadata.get("upstream_request_id", "") == upstream_id(upstream)


async def test_an_upstream_that_never_answered_has_no_id_of_its_own(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("fault-reset-before"), metadata=(("x-request-id", CALLER_ID),))

    assert outcome.error is not None
    info = error_info(outcome.error)
    assert info.metadata["request_id"] == CALLER_ID
    assert "upstream_request_id" not in info.metadata
    assert upstream.fake.response_ids == []


@pytest.mark.parametrize(
    "sent",
    [
        None,
        "",
        "has space",
        "semi;colon",
        "comma,separated",
        "x" * (MAX_REQUEST_ID_CHARS + 1),
    ],
    ids=["missing", "empty", "space", "semicolon", "comma", "too-long"],
)
async def test_a_missing_or_invalid_id_is_replaced_by_a_new_one_used_everywhere(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture, sent: str | None
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    metadata = () if sent is None else (("x-request-id", sent),)
    async with stub_for(openai_gateway) as stub:
        call = stub.Generate(unary_request("gpt-test"), metadata=metadata, timeout=10)
        await call
        [made] = header(await call.trailing_metadata(), "x-request-id")

    assert made != sent
    assert valid_request_id(made)
    assert fake_openai.requests[0].headers["x-request-id"] == made
    [line] = access_lines(caplog)
    assert field(line, "request_id") == made


@pytest.mark.parametrize("sent", ["x" * MAX_REQUEST_ID_CHARS, "aZ09-_.:/+=@", "550e8400-e29b-41d4-a716-446655440000"])
async def test_a_valid_id_is_kept_as_sent(openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream, sent: str) -> None:
    async with stub_for(openai_gateway) as stub:
        call = stub.Generate(unary_request("gpt-test"), metadata=(("x-request-id", sent),), timeout=10)
        await call
        assert header(await call.trailing_metadata(), "x-request-id") == [sent]
    assert fake_openai.requests[0].headers["x-request-id"] == sent


async def test_two_calls_without_ids_get_different_ones(openai_gateway: Gateway) -> None:
    async with stub_for(openai_gateway) as stub:
        calls = [stub.Generate(unary_request("gpt-test"), timeout=10) for _ in range(2)]
        for call in calls:
            await call
        ids = [header(await call.trailing_metadata(), "x-request-id")[0] for call in calls]
    assert ids[0] != ids[1]


async def test_a_unary_answer_has_the_id_in_its_trailers_only_a_stream_in_its_headers_too(
    openai_gateway: Gateway,
) -> None:
    """Generate sends no initial metadata of its own (a separate send, ~100 µs a call); streams need the id
    before their first token."""
    metadata = (("x-request-id", CALLER_ID),)
    async with stub_for(openai_gateway) as stub:
        unary = stub.Generate(unary_request("gpt-test"), metadata=metadata, timeout=10)
        await unary
        stream = stub.StreamGenerate(request("gpt-test"), metadata=metadata, timeout=10)
        stream_headers = await stream.initial_metadata()
        _ = [chunk async for chunk in stream]

    assert header(await unary.initial_metadata(), "x-request-id") == []
    assert header(await unary.trailing_metadata(), "x-request-id") == [CALLER_ID]
    assert header(stream_headers, "x-request-id") == [CALLER_ID]


async def test_an_interactive_session_has_one_id_and_each_turn_record_its_own_request_id(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(openai_gateway) as stub:
        bidi = Bidi(stub, metadata=(("x-request-id", CALLER_ID),))
        started = await bidi.start("gpt-test", mode=pb.SESSION_MODE_PIPELINE)
        await bidi.turn("r1", "one")
        await bidi.turn("r2", "two", model="fault-500")
        await bidi.until_end_of("r1")
        [failed] = await bidi.until_end_of("r2")
        ended = await bidi.finish()
        headers, trailers = await bidi.call.initial_metadata(), await bidi.call.trailing_metadata()

    assert ended.code == Code.OK
    assert header(headers, "x-request-id") == [CALLER_ID]
    assert header(headers, "session-id") == [started.session_id]
    assert header(trailers, "x-request-id") == [CALLER_ID]
    assert sorted(r.headers["x-request-id"] for r in fake_openai.requests) == [f"{CALLER_ID}.1", f"{CALLER_ID}.2"]
    info = error_info_of(failed)
    assert info.metadata["session_request_id"] == CALLER_ID
    assert info.metadata["upstream_request_id"] in fake_openai.response_ids
    turns = {field(line, "turn_request_id"): line for line in access_lines(caplog) if ".turn " in line}
    assert set(turns) == {"r1", "r2"}
    assert {field(line, "request_id") for line in turns.values()} == {CALLER_ID}
    assert {field(line, "upstream_request_id") for line in turns.values()} == set(fake_openai.response_ids)


def error_info_of(response: pb.InteractiveResponse) -> error_details_pb2.ErrorInfo:
    assert response.WhichOneof("kind") == "error", response
    info = detail(response.error.status, error_details_pb2.ErrorInfo)
    assert info is not None
    return info


async def test_a_refused_call_gets_its_id_too(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    gateway = await make_gateway(openai_config(fake_openai.base_url, auth=client_auth()))
    wrong = (("authorization", "Bearer wrong"), ("x-request-id", CALLER_ID))
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(unary_request("gpt-test"), metadata=wrong, timeout=30)
        good = (("authorization", f"Bearer {CLIENT_TOKEN}"),)
        await stub.Generate(unary_request("gpt-test"), metadata=good, timeout=30)

    assert refused.value.code() == Code.UNAUTHENTICATED
    assert header(refused.value.trailing_metadata(), "x-request-id") == [CALLER_ID]
    assert error_info(refused.value).metadata["request_id"] == CALLER_ID
    refused_line, _ = access_lines(caplog)
    assert field(refused_line, "request_id") == CALLER_ID


async def test_a_whole_answer_names_the_upstreams_id_too(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    async with stub_for(gateway) as stub:
        await stub.Generate(unary_request("echo"), metadata=(("x-request-id", CALLER_ID),), timeout=10)

    [line] = access_lines(caplog)
    assert field(line, "upstream_request_id") == upstream_id(upstream, failed=False)
    assert upstream.fake.requests[0].headers["x-request-id"] == CALLER_ID
