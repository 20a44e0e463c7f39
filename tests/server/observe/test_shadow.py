"""Shadow traffic: the config entry and its checks, the text difference, and sampling with an injected random
source through a gateway in front of two fake upstreams."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from server.config import ConfigError, ModelConfig, ProviderConfig, load_config
from server.observe.shadow import ShadowResult, text_difference
from server.routing.catalog import Shadow
from tests.conftest import UPSTREAM_KEY, GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi
from tests.rpc import collect_stream, request, stub_for, unary_request


def write(tmp_path: Path, models: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers:\n  - {name: main, kind: demo}\n  - {name: side, kind: demo}\nmodels:\n"
        + textwrap.indent(textwrap.dedent(models), "  ")
    )
    return path


def test_a_shadow_entry_is_read_with_its_default_cap(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            - name: a
              provider: main
              shadow: {deployment: side/a-next, percent: 12.5}
            - {name: b, provider: main, shadow: {model: a, percent: 100, max_concurrent: 2}}
            - {name: c, provider: main}
            """,
        ),
        env={},
    )
    a, b, c = config.models
    assert a.shadow == Shadow(deployment="side/a-next", percent=12.5, max_concurrent=8)
    assert b.shadow == Shadow(model="a", percent=100, max_concurrent=2)
    assert c.shadow is None


@pytest.mark.parametrize(
    ("shadow", "problem"),
    [
        ("{percent: 5}", "models[0].shadow: give either model or deployment (the shadow's target), not both"),
        ("{model: b, deployment: side/x, percent: 5}", "give either model or deployment"),
        ("{model: b}", "models[0].shadow.percent: required (the share of calls shadowed, 0 to 100)"),
        ("{model: b, percent: 101}", "models[0].shadow.percent: must be at most 100"),
        ("{model: b, percent: -1}", "models[0].shadow.percent: must be at least 0"),
        ("{model: b, percent: 5, max_concurrent: 0}", "models[0].shadow.max_concurrent: must be at least 1"),
        ("{model: b, percent: 5, sample: 1}", "models[0].shadow.sample: unknown key"),
        ("{model: nope, percent: 5}", "models: shadow model 'nope' of model 'a' is not another model"),
        ("{model: a, percent: 5}", "models: shadow model 'a' of model 'a' is not another model"),
        ("{deployment: nowhere, percent: 5}", "models: shadow deployment 'nowhere' of model 'a' is neither"),
        ("{deployment: other/x, percent: 5}", "models: shadow deployment 'other/x' of model 'a' is neither"),
    ],
)
def test_shadow_problems(tmp_path: Path, shadow: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(
            write(tmp_path, f"- {{name: a, provider: main, shadow: {shadow}}}\n- {{name: b, provider: main}}\n")
        )
    assert problem in str(raised.value)


def test_a_deployment_name_of_any_model_is_a_target(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            - {name: a, provider: main, shadow: {deployment: edge, percent: 5}}
            - name: b
              deployments: [{provider: side, upstream_model: b1, name: edge}]
            """,
        ),
        env={},
    )
    assert config.models[0].shadow == Shadow(deployment="edge", percent=5)


@pytest.mark.parametrize(
    ("primary", "shadow", "difference"),
    [
        ("hello brave world", "hello brave world", 0.0),
        ("hello brave world", "hello  brave\nworld", 0.0),  # words, not whitespace
        ("a b c d", "a b x d", 3 / 7),  # 3 of 4 words and 1 of 3 pairs in common: 1 - 2*4/14
        ("a b", "c d", 1.0),
        ("", "", 0.0),
        ("", "something", 1.0),
        ("one two three", "three two one", 0.4),  # the same words in another order: 1 - 2*3/10, the pairs differ
    ],
)
def test_the_text_difference_is_one_minus_the_dice_coefficient_of_words_and_word_pairs(
    primary: str, shadow: str, difference: float
) -> None:
    assert text_difference(primary, shadow) == pytest.approx(difference)


def test_only_the_first_words_are_compared() -> None:
    same_start = " ".join(["w"] * 10)
    assert text_difference(same_start + " x y z", same_start + " p q r", max_words=10) == 0.0


class Recorder:
    def __init__(self, expected: int) -> None:
        self.results: list[ShadowResult] = []
        self.dropped: list[tuple[str, str]] = []
        self._expected = expected
        self.done = asyncio.Event()

    def shadow_dropped(self, model: str, target: str) -> None:
        self.dropped.append((model, target))

    def shadow_ended(self, result: ShadowResult) -> None:
        self.results.append(result)
        if len(self.results) >= self._expected:
            self.done.set()


@pytest.fixture
async def side() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        yield upstream


async def test_the_injected_random_source_decides_which_calls_are_shadowed(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, side: FakeOpenAIUpstream
) -> None:
    base = openai_config(fake_openai.base_url)
    sides = ProviderConfig(name="side", kind="openai", base_url=side.base_url, api_key=UPSTREAM_KEY)
    shadowed = ModelConfig(
        name="half",
        provider="fake-openai",
        upstream_model="gpt-test",
        shadow=Shadow(deployment="side/gpt-test", percent=50),
    )
    gateway = await make_gateway(
        openai_config(fake_openai.base_url, providers=(*base.providers, sides), models=(*base.models, shadowed))
    )
    draws = iter([0.10, 0.60, 0.30, 0.90, 0.4999])
    recorder = Recorder(expected=3)
    gateway.router.shadows.rng = lambda: next(draws)
    gateway.router.shadows.observer = recorder
    async with stub_for(gateway) as stub:
        texts = [f"call {n}" for n in range(5)]
        outcomes = [await collect_stream(stub, request("half", text)) for text in texts]
    await asyncio.wait_for(recorder.done.wait(), 30)

    assert [o.error for o in outcomes] == [None] * 5
    assert sorted(r.body["messages"][-1]["content"] for r in side.requests) == ["call 0", "call 2", "call 4"]
    assert [(r.model, r.target, r.outcome, r.difference) for r in recorder.results] == [
        ("half", "side/gpt-test", "ok", 0.0)
    ] * 3
    assert recorder.dropped == []


async def test_a_failing_observer_changes_nothing_for_the_caller(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    base = openai_config(fake_openai.base_url)
    shadowed = ModelConfig(
        name="mirrored", provider="fake-openai", upstream_model="gpt-test", shadow=Shadow(model="gpt-test", percent=100)
    )
    gateway = await make_gateway(openai_config(fake_openai.base_url, models=(*base.models, shadowed)))
    ended = asyncio.Event()

    class Broken:
        def shadow_dropped(self, model: str, target: str) -> None:
            raise AssertionError("no slot is full here")

        def shadow_ended(self, result: ShadowResult) -> None:
            ended.set()
            raise RuntimeError("observer bug")

    gateway.router.shadows.observer = Broken()
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, request("mirrored"))
    await asyncio.wait_for(ended.wait(), 30)
    assert outcome.error is None
    assert "".join(outcome.deltas) == "hello brave world"
    assert "shadow observer failed" in caplog.text


async def test_a_generate_call_is_shadowed_with_a_whole_reply_and_compared(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, side: FakeOpenAIUpstream
) -> None:
    base = openai_config(fake_openai.base_url)
    sides = ProviderConfig(name="side", kind="openai", base_url=side.base_url, api_key=UPSTREAM_KEY)
    shadowed = ModelConfig(
        name="whole",
        provider="fake-openai",
        upstream_model="gpt-test",
        shadow=Shadow(deployment="side/tokens-2", percent=100),
    )
    gateway = await make_gateway(
        openai_config(fake_openai.base_url, providers=(*base.providers, sides), models=(*base.models, shadowed))
    )
    recorder = Recorder(expected=1)
    gateway.router.shadows.observer = recorder
    async with stub_for(gateway) as stub:
        reply = await stub.Generate(unary_request("whole", "t0 t9"), metadata=(("x-request-id", "whole-1"),))
    await asyncio.wait_for(recorder.done.wait(), 30)

    assert reply.content == "t0 t9"
    [result] = recorder.results
    assert (result.outcome, result.streaming, result.ttft_s) == ("ok", False, None)
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 2)
    assert result.difference == pytest.approx(2 / 3)  # "t0 t9" against "t0 t1": 1 of 3 shingles each in common
    [upstream] = side.requests
    assert not upstream.body.get("stream")
    assert upstream.headers["x-request-id"] == "whole-1.shadow"


async def test_an_interactive_turn_is_shadowed_like_a_stream(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream, side: FakeOpenAIUpstream
) -> None:
    base = openai_config(fake_openai.base_url)
    sides = ProviderConfig(name="side", kind="openai", base_url=side.base_url, api_key=UPSTREAM_KEY)
    shadowed = ModelConfig(
        name="chatty",
        provider="fake-openai",
        upstream_model="gpt-test",
        shadow=Shadow(deployment="side/gpt-test", percent=100),
    )
    gateway = await make_gateway(
        openai_config(fake_openai.base_url, providers=(*base.providers, sides), models=(*base.models, shadowed))
    )
    recorder = Recorder(expected=2)
    gateway.router.shadows.observer = recorder
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("chatty")
        await bidi.turn("1", "first words")
        await bidi.until_end_of("1")
        await bidi.turn("2", "second words")
        await bidi.until_end_of("2")
        assert (await bidi.finish()).code is grpc.StatusCode.OK
    await asyncio.wait_for(recorder.done.wait(), 30)

    assert [(r.outcome, r.streaming, r.difference) for r in recorder.results] == [("ok", True, 0.0)] * 2
    assert [r.body["messages"][-1]["content"] for r in side.requests] == ["first words", "second words"]
