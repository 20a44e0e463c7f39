"""The attempt loop with tools: the first tool-call piece is the first token (held, retried and fallen back
before it, never after), a tool call cut mid-way is not resumed, and capabilities pick the deployments."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from server.errors import CapabilityUnsupported, GatewayError
from server.routing.catalog import Deployment, ModelConfig
from server.types import ChatMessage, ChatRequest, Role, SamplingParams, StreamEvent, TextDelta, Tool, ToolCallDelta
from tests.server.routing.test_plan import Setup, finish_of, interrupted, model, unavailable
from tests.server.scripted import Cut, Reply, Scripts, ToolReply

WEATHER = Tool("get_weather", "", '{"type":"object"}')
OPENING = ToolCallDelta(0, "call_1", "get_weather", "")
PIECES = (OPENING, ToolCallDelta(0, arguments='{"city":'), ToolCallDelta(0, arguments='"Paris"}'))


def tool_chat() -> ChatRequest:
    params = SamplingParams(tools=(WEATHER,))
    return ChatRequest("m", (ChatMessage(Role.USER, "weather?"),), params, timeout_s=30.0)


async def stream(setup: Setup, name: str) -> tuple[list[StreamEvent], GatewayError | None]:
    events: list[StreamEvent] = []
    try:
        async with aclosing(setup.router.stream(setup.model(name), tool_chat())) as events_:
            async for event in events_:
                events.append(event)
    except GatewayError as error:
        return events, error
    return events, None


async def test_a_failure_before_the_first_tool_call_piece_falls_back_invisibly() -> None:
    scripts: Scripts = {"a": {"m": [unavailable()], "f": [ToolReply(PIECES)]}}
    setup = Setup(scripts, [model("m", fallbacks=("f",)), model("f")])

    events, error = await stream(setup, "m")

    assert error is None
    assert events[:-1] == list(PIECES)
    assert finish_of(events).served is not None
    assert finish_of(events).served.model == "f"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "cut",
    [(OPENING, ToolCallDelta(0, arguments='{"ci')), ("Let me look.", OPENING)],
    ids=["inside-the-call", "text-then-the-call"],
)
async def test_a_stream_cut_after_a_tool_call_started_is_not_resumed(cut: tuple[str | ToolCallDelta, ...]) -> None:
    # resume: continue would send the partial text back as an assistant turn; half a tool call cannot be.
    scripts: Scripts = {"a": {"m": [Cut(cut, interrupted())], "f": [Reply("world")]}}
    setup = Setup(scripts, [model("m", fallbacks=("f",), resume="continue"), model("f")])

    events, error = await stream(setup, "m")

    assert events == [TextDelta(c) if isinstance(c, str) else c for c in cut]
    assert error is not None
    assert error.reason == "UPSTREAM_STREAM_INTERRUPTED"
    assert error.metadata["partial_completion_tokens"] == "2"
    assert setup.calls("a", "f") == 0


async def test_a_model_without_the_capability_is_refused_before_any_upstream_call() -> None:
    no_tools = model("m", capabilities=frozenset({"json_object"}))
    setup = Setup({"a": {"m": [Reply()]}}, [no_tools])

    events, error = await stream(setup, "m")
    with pytest.raises(CapabilityUnsupported) as raised:
        await setup.router.complete(setup.model("m"), tool_chat())

    assert events == []
    for failure in (error, raised.value):
        assert isinstance(failure, CapabilityUnsupported)
        assert failure.metadata == {"capability": "tools", "model": "m"}
    assert setup.providers["a"].requests == []


async def test_deployments_without_the_capability_are_skipped() -> None:
    mixed = ModelConfig(
        name="m",
        deployments=(
            Deployment("a", "m", weight=100, capabilities=frozenset({"json_object"})),
            Deployment("b", "m", weight=1),
        ),
    )
    setup = Setup({"a": {"m": [ToolReply(PIECES)]}, "b": {"m": [ToolReply(PIECES)]}}, [mixed])

    events, error = await stream(setup, "m")

    assert error is None
    assert finish_of(events).served.provider == "b"  # type: ignore[union-attr]
    assert setup.calls("a", "m") == 0


async def test_fallbacks_without_the_capability_are_skipped() -> None:
    scripts: Scripts = {"a": {"m": [unavailable()], "plain": [Reply()], "f": [ToolReply(PIECES)]}}
    models = [
        model("m", fallbacks=("plain", "f")),
        model("plain", capabilities=frozenset({"json_object"})),
        model("f"),
    ]
    setup = Setup(scripts, models)

    events, error = await stream(setup, "m")

    assert error is None
    assert finish_of(events).served.model == "f"  # type: ignore[union-attr]
    assert setup.calls("a", "plain") == 0
