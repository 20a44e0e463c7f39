"""The conformance table's rows for Embed and CountTokens, through real gateways and each provider's byte-exact
fake: vectors in order with usage and cost (OpenAI-compatible and Gemini), Anthropic refused before any
upstream call, chat and embedding models each refused the other's call, a fallback from a failing embedding
deployment, the request checks, the upstreams' failures with the same statuses as Generate's, and counts
that are exact where the provider counts (Anthropic, Gemini) and the marked estimate elsewhere.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import TRANSPORTS, ModelConfig
from server.types import Usage
from tests.conftest import GatewayFactory
from tests.fakes.embeddings import SHORT, fake_vector
from tests.integration.test_conformance import (
    FAULT_CASES,
    PRICE,
    Upstream,
    assert_fault_status,
    conformance_config,
    upstream,
)
from tests.integration.test_openai_bridge import Fault
from tests.rpc import collect_stream, detail, error_info, rich_status, stub_for, unary_request

__all__ = ["upstream"]  # the fixture, imported for pytest

Code = grpc.StatusCode
EMBEDDINGS = frozenset({"embeddings"})
TEXTS = ["hello brave world", "two words", "x"]
# Faults an embedding or count endpoint answers as the chat endpoint does: the HTTP errors and a reset
# before any answer (the mid-stream and in-band faults are the chat wire's own).
UNARY_FAULTS = [
    case
    for case in FAULT_CASES
    if case.values[1].http_status is not None or case.values[1].model == "fault-reset-before"  # type: ignore[union-attr]
]
# Anthropic has no embeddings endpoint (Embed is refused before any call); OpenAI-compatible upstreams have no
# count endpoint (CountTokens never calls them).
EMBED_FAULTS = [case for case in UNARY_FAULTS if case.values[0] != "anthropic"]
COUNT_FAULTS = [case for case in UNARY_FAULTS if case.values[0] != "openai"]


def embedding_model(name: str, upstream: Upstream, upstream_model: str = "", **fields: object) -> ModelConfig:
    return ModelConfig(
        name=name,
        provider=upstream.provider,
        upstream_model=upstream_model or name,
        price=PRICE,
        capabilities=EMBEDDINGS,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture(params=TRANSPORTS)
async def gateway(make_gateway: GatewayFactory, upstream: Upstream, request: pytest.FixtureRequest) -> Gateway:
    """The conformance gateway (its chat models: `echo`, the faults) plus embedding models: `embedder`, one per
    fault (`embed-<fault>`), `short` (one vector too few), `unreported` (no usage), and `flaky` (a failing
    deployment, then the fallbacks `echo`, a chat model that must be skipped, and `embedder`)."""
    config = conformance_config(upstream.kind, upstream.fake.base_url, request.param)
    if upstream.kind == "anthropic":
        return await make_gateway(config)
    extra = [
        embedding_model("embedder", upstream),
        embedding_model("short", upstream, SHORT),
        embedding_model("unreported", upstream, "no-usage"),
        embedding_model("flaky", upstream, "fault-503", fallbacks=("echo", "embedder")),
        *(embedding_model(f"embed-{m.name}", upstream, m.name) for m in config.models if m.name.startswith("fault-")),
    ]
    return await make_gateway(replace(config, models=(*config.models, *extra)))


def expected_usage(kind: str, texts: list[str]) -> tuple[int, bool]:
    """(prompt tokens, estimated): OpenAI reports them (the fake: words); Gemini reports none, so the
    gateway estimates a quarter of the characters."""
    if kind == "gemini":
        return math.ceil(sum(len(t) for t in texts) / 4), True
    return sum(len(t.split()) for t in texts), False


@pytest.mark.parametrize("upstream", ["openai", "gemini"], indirect=True)
async def test_embed_gives_one_vector_per_text_in_order_with_usage_and_cost(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with stub_for(gateway) as stub:
        response = await stub.Embed(pb.EmbedRequest(model="embedder", texts=TEXTS, dimensions=4), timeout=30)

    assert [e.index for e in response.embeddings] == [0, 1, 2]
    for embedding, text in zip(response.embeddings, TEXTS, strict=True):
        assert list(embedding.values) == pytest.approx(fake_vector(text, 4), abs=1e-6)
    assert (response.model, response.provider, response.deployment) == (
        "embedder",
        upstream.provider,
        f"{upstream.provider}/embedder",
    )
    tokens, estimated = expected_usage(upstream.kind, TEXTS)
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (tokens, 0, tokens)
    assert (usage.estimated, usage.unreported) == (estimated, False)
    assert usage.cost_usd == pytest.approx(PRICE.cost(Usage(tokens, 0, tokens)))
    (sent,) = upstream.fake.requests
    if upstream.kind == "openai":
        assert sent.body == {"model": "embedder", "input": TEXTS, "encoding_format": "float", "dimensions": 4}
    else:
        assert sent.body == {
            "requests": [
                {"model": "models/embedder", "content": {"parts": [{"text": t}]}, "outputDimensionality": 4}
                for t in TEXTS
            ]
        }


@pytest.mark.parametrize("upstream", ["openai"], indirect=True)
async def test_an_answer_without_usage_is_charged_the_marked_estimate(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        response = await stub.Embed(pb.EmbedRequest(model="unreported", texts=["abcdefghi"]), timeout=30)

    usage = response.usage
    assert (usage.prompt_tokens, usage.total_tokens, usage.estimated, usage.unreported) == (3, 3, True, False)
    assert usage.cost_usd == pytest.approx(PRICE.cost(Usage(3, 0, 3)))


@pytest.mark.parametrize("upstream", ["gemini"], indirect=True)
async def test_gemini_takes_the_task_type(gateway: Gateway, upstream: Upstream) -> None:
    request = pb.EmbedRequest(model="embedder", texts=["q"], task_type=pb.EMBED_TASK_TYPE_RETRIEVAL_QUERY)
    async with stub_for(gateway) as stub:
        response = await stub.Embed(request, timeout=30)

    assert list(response.embeddings[0].values) == pytest.approx(fake_vector("q"), abs=1e-6)
    (sent,) = upstream.fake.requests
    assert sent.body["requests"][0]["taskType"] == "RETRIEVAL_QUERY"


def assert_capability_refused(error: grpc.aio.AioRpcError | None, capability: str, model: str) -> None:
    assert error is not None
    assert error.code() == Code.FAILED_PRECONDITION
    info = error_info(error)
    assert (info.reason, dict(info.metadata)) == (
        "CAPABILITY_UNSUPPORTED",
        {"capability": capability, "model": model, "request_id": info.metadata["request_id"]},
    )


async def test_embed_on_a_chat_model_is_refused_before_any_upstream_call(gateway: Gateway, upstream: Upstream) -> None:
    # Anthropic's models are chat models all: it has no embeddings endpoint.
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(pb.EmbedRequest(model="echo", texts=["a"]), timeout=30)

    assert_capability_refused(raised.value, "embeddings", "echo")
    assert upstream.fake.requests == []


@pytest.mark.parametrize("upstream", ["openai", "gemini"], indirect=True)
async def test_generating_on_an_embedding_model_is_refused_naming_chat(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="embedder", messages=[user("hi")]))
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Generate(unary_request("embedder"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as counted:
            await stub.CountTokens(pb.CountTokensRequest(model="embedder", messages=[user("hi")]), timeout=30)

    assert outcome.chunks == []
    for error in (outcome.error, unary.value, counted.value):
        assert_capability_refused(error, "chat", "embedder")
    assert upstream.fake.requests == []


@pytest.mark.parametrize("upstream", ["openai", "gemini"], indirect=True)
async def test_a_failing_embedding_deployment_falls_back_past_a_chat_model(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with stub_for(gateway) as stub:
        response = await stub.Embed(pb.EmbedRequest(model="flaky", texts=["a b"]), timeout=30)

    assert (response.model, response.deployment) == ("embedder", f"{upstream.provider}/embedder")
    assert list(response.embeddings[0].values) == pytest.approx(fake_vector("a b"), abs=1e-6)
    # The failing deployment, then the embedding fallback: the chat model `echo` was never asked.
    assert [r.path.rsplit("/", 1)[-1] for r in upstream.fake.requests] in (
        ["embeddings", "embeddings"],
        ["fault-503:batchEmbedContents", "embedder:batchEmbedContents"],
    )


@pytest.mark.parametrize("upstream", ["openai"], indirect=True)
async def test_bad_embed_requests_are_invalid_argument_naming_each_field(gateway: Gateway, upstream: Upstream) -> None:
    cases = [
        (pb.EmbedRequest(model="embedder"), [("texts", "at least one text is required")]),
        (
            pb.EmbedRequest(model="embedder", texts=["a", "", "b", "x" * (64 * 1024 + 1)], dimensions=0),
            [
                ("texts[1]", "must not be empty"),
                ("texts[3]", "is 65537 bytes; the limit is 65536"),
                ("dimensions", "must be in [1, 4096], got 0"),
            ],
        ),
        (pb.EmbedRequest(model="embedder", texts=["a"] * 2049), [("texts", "2049 texts; the limit is 2048")]),
        (pb.EmbedRequest(model="", texts=["a"], dimensions=4097), [("model", "required"), ("dimensions", ANY)]),
    ]
    async with stub_for(gateway) as stub:
        for request, expected in cases:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Embed(request, timeout=30)
            assert raised.value.code() == Code.INVALID_ARGUMENT
            assert error_info(raised.value).reason == "INVALID_REQUEST"
            bad = detail(rich_status(raised.value), error_details_pb2.BadRequest)
            assert bad is not None
            assert [(v.field, v.description) for v in bad.field_violations] == expected
    assert upstream.fake.requests == []


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()


@pytest.mark.parametrize("upstream", ["openai"], indirect=True)
async def test_an_unknown_embedding_model_is_model_not_found(gateway: Gateway) -> None:
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(pb.EmbedRequest(model="embeder", texts=["a"]), timeout=30)
    assert raised.value.code() == Code.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "MODEL_NOT_FOUND"


@pytest.mark.parametrize("upstream", ["openai", "gemini"], indirect=True)
async def test_an_answer_without_a_vector_per_text_is_a_bad_response(gateway: Gateway, upstream: Upstream) -> None:
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(pb.EmbedRequest(model="short", texts=["a", "b"]), timeout=30)

    assert raised.value.code() == Code.UNAVAILABLE
    info = error_info(raised.value)
    assert info.reason == "UPSTREAM_BAD_RESPONSE"
    assert (info.metadata["limit"], info.metadata["vectors"], info.metadata["texts"]) == ("vector_count", "1", "2")
    assert info.metadata["provider"] == upstream.provider


@pytest.mark.parametrize(("upstream", "fault"), EMBED_FAULTS, indirect=["upstream"])
async def test_embed_fault(gateway: Gateway, upstream: Upstream, fault: Fault) -> None:
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(pb.EmbedRequest(model=f"embed-{fault.model}", texts=["a"]), timeout=30)

    assert_fault_status(raised.value, fault, fault.unary_reason or fault.reason, upstream)
    assert error_info(raised.value).metadata["model"] == f"embed-{fault.model}"


def user(text: str) -> pb.Message:
    return pb.Message(role="user", content=text)


COUNTED = [pb.Message(role="system", content="be brief"), user("hello brave world")]


async def test_count_tokens_is_exact_where_the_provider_counts_and_an_estimate_elsewhere(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with stub_for(gateway) as stub:
        count = await stub.CountTokens(pb.CountTokensRequest(model="echo", messages=COUNTED), timeout=30)
        reply = await stub.Generate(pb.GenerateRequest(model="echo", messages=COUNTED), timeout=30)

    assert (count.model, count.provider, count.deployment) == ("echo", upstream.provider, f"{upstream.provider}/echo")
    if upstream.kind == "openai":
        # No count endpoint: a quarter of the characters, marked, and nothing sent upstream for it.
        assert (count.input_tokens, count.estimated) == (math.ceil(len("be briefhello brave world") / 4), True)
        assert len(upstream.fake.requests) == 1
        return
    # The provider's own count: what the same request's reply reports as its prompt.
    assert (count.input_tokens, count.estimated) == (reply.usage.prompt_tokens, False)
    sent = upstream.fake.requests[0]
    if upstream.kind == "anthropic":
        assert (sent.path, sent.body) == (
            "/v1/messages/count_tokens",
            {"model": "echo", "messages": [{"role": "user", "content": "hello brave world"}], "system": "be brief"},
        )
    else:
        assert sent.path == "/v1beta/models/echo:countTokens"
        assert sent.body == {
            "generateContentRequest": {
                "model": "models/echo",
                "contents": [{"role": "user", "parts": [{"text": "hello brave world"}]}],
                "systemInstruction": {"parts": [{"text": "be brief"}]},
            }
        }


@pytest.mark.parametrize(("upstream", "fault"), COUNT_FAULTS, indirect=["upstream"])
async def test_count_tokens_fault(gateway: Gateway, upstream: Upstream, fault: Fault) -> None:
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.CountTokens(pb.CountTokensRequest(model=fault.model, messages=[user("a")]), timeout=30)

    assert_fault_status(raised.value, fault, fault.unary_reason or fault.reason, upstream)


@pytest.mark.parametrize("upstream", ["openai", "gemini"], indirect=True)
async def test_a_client_that_cancels_a_held_embed_call_closes_the_upstream_request(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.fake.hold()  # the upstream has the request and answers nothing until released
    try:
        async with stub_for(gateway) as stub:
            call = stub.Embed(pb.EmbedRequest(model="embedder", texts=["a"]), timeout=30)
            await upstream.fake.wait_for_requests(1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await upstream.fake.wait_for_disconnect()
    finally:
        upstream.fake.release()
