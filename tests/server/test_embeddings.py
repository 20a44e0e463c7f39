"""Embeddings in the catalog and the config (the capability, the implicit "chat" of every other model, no
embeddings on Anthropic), the bounds on what an upstream answers, and the gateway's one token estimate."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from server import defaults
from server.config import ConfigError, ProviderConfig, load_config
from server.embedding import EmbedRequest, estimate_chat_tokens, estimate_tokens, estimated_usage
from server.errors import UpstreamBadResponse
from server.providers.openai import OpenAIProvider
from server.providers.vectors import check_count, checked_vector
from server.routing.catalog import BUILTIN_MODELS, CHAT, Deployment, ModelConfig, cost_of
from server.types import ChatMessage, ChatRequest, Role, SamplingParams, Tool, ToolCall, Usage

EMBEDDINGS = frozenset({"embeddings"})


def test_an_embedding_model_serves_embed_only_and_every_other_model_chats() -> None:
    embedder = ModelConfig(name="e", provider="p", capabilities=EMBEDDINGS)
    plain = ModelConfig(name="c", provider="p", capabilities=frozenset())
    both = ModelConfig(name="b", provider="p", capabilities=EMBEDDINGS | {"tools"})
    assert (embedder.lacks(frozenset({CHAT})), embedder.lacks(EMBEDDINGS)) == ("chat", None)
    assert (plain.lacks(frozenset({CHAT})), plain.lacks(EMBEDDINGS)) == (None, "embeddings")
    assert (both.lacks(frozenset({CHAT, "tools"})), both.lacks(EMBEDDINGS)) == (None, None)
    # A deployment's own capabilities decide for it: a chat deployment of an embedding model chats.
    mixed = ModelConfig(
        name="m",
        capabilities=EMBEDDINGS,
        deployments=(Deployment("p", "e"), Deployment("p", "c", capabilities=frozenset({"tools"}))),
    )
    assert [mixed.serves(d, frozenset({CHAT})) for d in mixed.all_deployments] == [False, True]
    assert sorted(embedder.all_capabilities()) == ["embeddings"]  # "chat" is never listed


@pytest.mark.parametrize(
    ("name", "per_million"),
    [
        ("openai/text-embedding-3-small", 0.02),
        ("openai/text-embedding-3-large", 0.13),
        ("gemini/gemini-embedding-001", 0.15),
    ],
)
def test_builtin_embedding_models_embed_at_their_input_price(name: str, per_million: float) -> None:
    model = BUILTIN_MODELS[name]
    assert (model.capabilities, model.max_tokens) == (EMBEDDINGS, 0)
    usage = Usage(1_000_000, 0, 1_000_000, cached_prompt_tokens=0)
    assert cost_of(model, model.all_deployments[0], usage) == pytest.approx(per_million)
    assert not any("embeddings" in m.capabilities for m in BUILTIN_MODELS.values() if m.provider == "anthropic")


def test_an_anthropic_model_cannot_say_it_embeds(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            """
            providers:
              - {name: claude, kind: anthropic, base_url: "http://127.0.0.1:9", api_key_env: K}
              - {name: local, kind: openai, base_url: "http://127.0.0.1:9", api_key_env: K}
            models:
              - {name: local-embed, provider: local, capabilities: [embeddings]}
              - {name: claude-embed, provider: claude, capabilities: [embeddings]}
            """
        )
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={"K": "sk-test-key-0123456789"})
    problems = str(raised.value)
    assert "models[1].capabilities: provider 'claude' (anthropic) has no embeddings endpoint" in problems
    assert "models[0]" not in problems


def test_an_answer_must_hold_one_vector_per_text() -> None:
    check_count("p", 3, 3)
    with pytest.raises(UpstreamBadResponse) as raised:
        check_count("p", 2, 3)
    assert (raised.value.reason, raised.value.metadata) == (
        "UPSTREAM_BAD_RESPONSE",
        {"provider": "p", "limit": "vector_count", "vectors": "2", "texts": "3"},
    )


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        ([], "vector_values"),
        ("0.5", "vector_values"),
        ({"a": 1}, "vector_values"),
        ([0.1, "x"], "vector_values"),
        ([0.1, True], "vector_values"),
        ([0.1, math.inf], "vector_values"),
        ([0.1, math.nan], "vector_values"),
        ([0.0] * (defaults.MAX_VECTOR_LENGTH + 1), "vector_length"),
    ],
)
def test_a_vector_is_a_bounded_list_of_finite_numbers(raw: object, limit: str) -> None:
    with pytest.raises(UpstreamBadResponse) as raised:
        checked_vector("p", raw)
    assert raised.value.metadata["limit"] == limit


def test_a_good_vector_becomes_floats() -> None:
    assert checked_vector("p", [1, 0.5, -2]) == (1.0, 0.5, -2.0)
    assert len(checked_vector("p", [0.0] * defaults.MAX_VECTOR_LENGTH)) == defaults.MAX_VECTOR_LENGTH


def test_the_estimate_is_a_quarter_of_the_characters_at_least_one() -> None:
    assert estimate_tokens(["abcd", "efghi"]) == 3
    assert estimate_tokens([""]) == 1
    assert estimated_usage(["12345678"]) == Usage(2, 0, 2, estimated=True)
    request = ChatRequest(
        "m",
        (
            ChatMessage(Role.USER, "abcd"),
            ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("c", "t", '{"a":1}'),)),
        ),
        SamplingParams(tools=(Tool("t", "desc", "{}"),)),
    )
    assert estimate_chat_tokens(request) == math.ceil((4 + 7 + 4 + 2) / 4)


@pytest.mark.parametrize("indexes", [[0, 0], [0, 2], [0, -1], [0, "1"]])
def test_openai_vectors_go_by_index_each_once(indexes: list[object]) -> None:
    provider = OpenAIProvider(ProviderConfig(name="p", kind="openai", base_url="http://127.0.0.1:9"))
    request = EmbedRequest("m", ("a", "b"))
    data = [{"index": i, "embedding": [0.5]} for i in indexes]
    with pytest.raises(UpstreamBadResponse) as raised:
        provider._embeddings({"data": data}, request)
    assert raised.value.metadata["limit"] == "vector_index"
    swapped = [{"index": 1, "embedding": [1]}, {"index": 0, "embedding": [0]}]
    assert provider._embeddings({"data": swapped}, request).vectors == ((0.0,), (1.0,))
