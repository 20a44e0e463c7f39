"""The clients' embed() and count_tokens(), and the CLI's embed and count-tokens, against real gateways: the
demo (offline) and an OpenAI-compatible fake whose embeddings carry usage and a price."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from client import AIClient, AsyncAIClient, EmbedResult, InvalidArgumentError, TokenCount, Usage
from client.__main__ import main
from server.config import ModelConfig, Price
from server.providers.demo import demo_embedding
from tests.conftest import GatewayFactory, openai_config
from tests.fakes.embeddings import fake_vector
from tests.fakes.openai_upstream import FakeOpenAIUpstream

PRICE = Price(0.02, 0.0)


def demo_vectors(*texts: str, size: int = 16) -> tuple[tuple[float, ...], ...]:
    # The gateway sends float32 on the wire: compare with what survives it.
    return tuple(tuple(pytest.approx(v, abs=1e-6) for v in demo_embedding(t, size)) for t in texts)  # type: ignore[misc]


async def test_async_embed_returns_typed_vectors_in_order(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        result = await client.embed(["hello brave world", "brave new"], model="demo", dimensions=8)

    assert result.vectors == demo_vectors("hello brave world", "brave new", size=8)
    assert (result.model, result.provider, result.usage, result.cost_usd) == ("demo", "demo", Usage(5, 0, 5), None)


async def test_sync_embed_and_count_tokens(make_gateway: GatewayFactory) -> None:
    async with FakeOpenAIUpstream() as fake:
        config = openai_config(fake.base_url)
        embedder = ModelConfig(
            name="embedder",
            provider="fake-openai",
            upstream_model="embedder",
            price=PRICE,
            capabilities=frozenset({"embeddings"}),
        )
        gateway = await make_gateway(replace(config, models=(*config.models, embedder)))
        target = f"127.0.0.1:{gateway.port}"
        chat = next(m.name for m in config.models if m.provider == "fake-openai")

        def calls() -> tuple[EmbedResult, TokenCount]:
            with AIClient(target=target, plaintext=True) as client:
                embedded = client.embed(["one two", "three"], model="embedder", task_type="retrieval_query")
                counted = client.count_tokens("hello brave world", model=chat, system="be brief")
                return embedded, counted

        embedded, counted = await asyncio.to_thread(calls)

    assert [list(v) for v in embedded.vectors] == [
        pytest.approx(fake_vector(t), abs=1e-6) for t in ("one two", "three")
    ]
    assert embedded.usage == Usage(3, 0, 3)
    assert embedded.cost_usd == pytest.approx(3 * 0.02 / 1_000_000)
    assert counted == TokenCount(7, True, chat, "fake-openai")  # 25 characters / 4, an estimate


async def test_embed_errors_are_the_client_error_tree(demo_target: str) -> None:
    async with AsyncAIClient(target=demo_target, plaintext=True) as client:
        with pytest.raises(InvalidArgumentError) as raised:
            await client.embed(["a", ""], model="demo")
    assert raised.value.reason == "INVALID_REQUEST"
    assert [field for field, _ in raised.value.field_violations] == ["texts[1]"]


async def test_cli_embed_prints_one_json_vector_per_text(demo_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["embed", "--model", "demo", "--text", "a b", "--text", "c", "--dimensions", "4"]
    code = await asyncio.to_thread(main, [*argv, "--target", demo_target, "--plaintext"])

    out, err = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [tuple(pytest.approx(v, abs=1e-6) for v in line) for line in lines] == list(demo_vectors("a b", "c", size=4))
    assert err == "[demo via demo: 2 vectors of 4, 3 tokens]\n"


async def test_cli_count_tokens_says_it_is_an_estimate(demo_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["count-tokens", "--model", "demo", "--prompt", "hello brave world", "--system", "be brief"]
    code = await asyncio.to_thread(main, [*argv, "--target", demo_target, "--plaintext"])

    out, err = capsys.readouterr()
    assert code == 0
    assert (out, err) == ("7\n", "[demo: estimated by the gateway]\n")
