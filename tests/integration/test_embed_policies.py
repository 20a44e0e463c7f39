"""Embed and CountTokens pass the policy seam as Generate does: a client's allowed models, its request and
token limits (Embed's texts are its prompt; CountTokens spends no tokens), request ids, the access log and
the metrics, through a real gateway and the OpenAI-compatible fake."""

from __future__ import annotations

import logging
from dataclasses import replace

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.config import ClientConfig, ClientLimits
from server.observe.request_id import REQUEST_ID_HEADER
from server.routing.catalog import ModelConfig, Price
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.integration.test_clients import (
    ALPHA,
    BETA,
    Clock,
    auth,
    clock,
    digest,
    gateways,
    metadata_without_request_id,
    quota_failure,
    start,
    stub,
    two_clients,
)
from tests.rpc import error_info

__all__ = ["clock", "gateways", "stub"]  # fixtures, imported for pytest

EMBEDDER = ModelConfig(
    name="embedder", provider="fake-openai", upstream_model="embedder", price=Price(0.02, 0.0),
    capabilities=frozenset({"embeddings"}),
)  # fmt: skip


async def embed_gateway(
    gateways: list[Gateway], fake: FakeOpenAIUpstream, clock: Clock, alpha: ClientLimits
) -> Gateway:
    """alpha may call gpt-test and the embedder, with `alpha` limits; beta only the demo model."""
    config = two_clients(fake.base_url, alpha)
    clients = tuple(replace(c, models=("gpt-test", "embedder")) if c.name == "alpha" else c for c in config.clients)
    assert all(isinstance(c, ClientConfig) for c in clients)
    return await start(gateways, replace(config, models=(*config.models, EMBEDDER), clients=clients), clock)


async def test_a_client_embeds_with_its_own_models_only_and_each_call_has_a_request_id(
    gateways: list[Gateway],
    stub: pb_grpc.AIServiceAsyncStub,
    fake_openai: FakeOpenAIUpstream,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    gateway = await embed_gateway(gateways, fake_openai, clock, ClientLimits())

    call = stub.Embed(pb.EmbedRequest(model="embedder", texts=["a b"]), metadata=auth(ALPHA), timeout=30)
    response = await call
    trailers = dict(await call.trailing_metadata() or ())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Embed(pb.EmbedRequest(model="embedder", texts=["a"]), metadata=auth(BETA), timeout=30)
    counted = await stub.CountTokens(
        pb.CountTokensRequest(model="demo", messages=[pb.Message(role="user", content="abcdefgh")]),
        metadata=auth(BETA),
        timeout=30,
    )

    assert (response.model, response.usage.prompt_tokens) == ("embedder", 2)
    assert trailers[REQUEST_ID_HEADER]
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused.value).reason == "MODEL_NOT_ALLOWED"
    assert metadata_without_request_id(refused.value) == {"model": "embedder"}
    assert (counted.input_tokens, counted.estimated) == (2, True)
    assert [r.path for r in fake_openai.requests] == ["/v1/embeddings"]
    logged = [r.getMessage() for r in caplog.records if r.name == "server.access"]
    assert any(line.startswith("Embed client=alpha model=embedder") and "code=OK" in line for line in logged)
    assert any(line.startswith("CountTokens client=beta model=demo") for line in logged)
    assert gateway.metrics is not None
    sample = gateway.metrics.registry.get_sample_value
    labels = {"grpc_method": "Embed", "client": "beta", "gen_ai_request_model": "embedder"}
    assert sample("gateway_calls_total", {**labels, "code": "PERMISSION_DENIED", "reason": "MODEL_NOT_ALLOWED"}) == 1
    assert sample("gateway_calls_total", {**labels, "client": "alpha", "code": "OK", "reason": ""}) == 1
    operations = {
        (sample.labels["gen_ai_operation_name"], sample.labels["gen_ai_request_model"])
        for family in gateway.metrics.registry.collect()
        if family.name == "gen_ai_client_operation_duration_seconds"
        for sample in family.samples
    }
    assert operations == {("embeddings", "embedder"), ("count_tokens", "demo")}


async def test_embed_texts_count_against_the_token_limit_and_count_tokens_spends_none(
    gateways: list[Gateway], stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream, clock: Clock
) -> None:
    await embed_gateway(gateways, fake_openai, clock, ClientLimits(requests_per_minute=3, tokens_per_minute=100))
    words = "w " * 300  # 600 characters: 150 tokens by the estimate; the fake reports its 300 words
    big = pb.CountTokensRequest(model="gpt-test", messages=[pb.Message(role="user", content=words)])

    counted = await stub.CountTokens(big, metadata=auth(ALPHA), timeout=30)
    # Admitted only with a full bucket (a claim bigger than the limit waits for one): the count took nothing.
    embedded = await stub.Embed(pb.EmbedRequest(model="embedder", texts=[words]), metadata=auth(ALPHA), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as out_of_tokens:
        await stub.Embed(pb.EmbedRequest(model="embedder", texts=["a"]), metadata=auth(ALPHA), timeout=30)
    await stub.CountTokens(big, metadata=auth(ALPHA), timeout=30)  # in token debt, a count still goes through
    with pytest.raises(grpc.aio.AioRpcError) as out_of_requests:
        await stub.CountTokens(big, metadata=auth(ALPHA), timeout=30)

    assert (counted.input_tokens, counted.estimated) == (150, True)
    assert embedded.usage.prompt_tokens == 300
    assert out_of_tokens.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota_failure(out_of_tokens.value).quota_id == "tokens_per_minute"
    assert quota_failure(out_of_requests.value).quota_id == "requests_per_minute"
    assert [r.path for r in fake_openai.requests] == ["/v1/embeddings"]  # the refused Embed never went out


__all__ += ["digest"]
