"""InteractiveStream messages: checks of start and turns, merged sampling options, and the responses."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2

from generated import ai_service_pb2 as pb
from server.errors import InvalidRequest, ModelNotFound, ShuttingDown
from server.interactive import wire
from server.routing.catalog import ModelConfig
from server.types import ChatMessage, Finish, FinishReason, Role, SamplingParams, Served, Usage


class Catalog:
    def __init__(self) -> None:
        self.known_names = ["demo", "small"]
        self._models = {"demo": ModelConfig("demo", "demo", "demo"), "small": ModelConfig("small", "demo", "s", 10)}

    def resolve(self, name: str) -> ModelConfig | None:
        return self._models.get(name)


def options(start: pb.SessionStart, *, cap: int = 16, max_bytes: int = 1000) -> wire.SessionOptions:
    return wire.session_options(start, catalog=Catalog(), max_in_flight=cap, max_request_bytes=max_bytes)


def fields(error: pytest.ExceptionInfo[InvalidRequest]) -> list[str]:
    return [v.field for v in error.value.violations]


@pytest.mark.parametrize(
    ("mode", "asked", "granted"),
    [
        (pb.SESSION_MODE_UNSPECIFIED, 8, 1),
        (pb.SESSION_MODE_CONVERSATION, 8, 1),
        (pb.SESSION_MODE_PIPELINE, 0, 16),
        (pb.SESSION_MODE_PIPELINE, 4, 4),
        (pb.SESSION_MODE_PIPELINE, 99, 16),
    ],
)
def test_the_mode_and_in_flight_limit_in_force(mode: pb.SessionMode.ValueType, asked: int, granted: int) -> None:
    checked = options(pb.SessionStart(model="demo", mode=mode, max_in_flight=asked))
    assert (checked.pipeline, checked.max_in_flight) == (mode == pb.SESSION_MODE_PIPELINE, granted)


def test_the_system_prompt_is_one_system_message_or_none() -> None:
    assert options(pb.SessionStart(model="demo", system_prompt="be brief")).system == (
        ChatMessage(Role.SYSTEM, "be brief"),
    )
    assert options(pb.SessionStart(model="demo")).system == ()


def test_every_problem_of_a_start_is_listed_against_its_own_field() -> None:
    start = pb.SessionStart(
        model="demo",
        system_prompt="x" * 1001,
        config=pb.GenerationConfig(temperature=3),
        mode=9,  # type: ignore[arg-type]
        max_in_flight=-2,
    )
    with pytest.raises(InvalidRequest) as error:
        options(start)
    assert fields(error) == ["system_prompt", "config.temperature", "mode", "max_in_flight"]


def test_an_unknown_model_alone_is_model_not_found_and_with_others_a_plain_violation() -> None:
    with pytest.raises(ModelNotFound):
        options(pb.SessionStart(model="nope"))
    with pytest.raises(InvalidRequest) as error:
        options(pb.SessionStart(model="nope", max_in_flight=-1))
    assert type(error.value) is InvalidRequest
    assert fields(error) == ["model", "max_in_flight"]


def turn(**fields: object) -> pb.TurnRequest:
    return pb.TurnRequest(request_id="t", **fields)  # type: ignore[arg-type]


def test_a_turn_is_its_messages_then_its_content() -> None:
    session = options(pb.SessionStart(model="demo", system_prompt="sys"))
    spec = wire.turn_spec(
        turn(content="now", messages=[pb.Message(role="assistant", content="before")]),
        session,
        catalog=Catalog(),
        max_request_bytes=1000,
    )
    assert spec.messages == (ChatMessage(Role.ASSISTANT, "before"), ChatMessage(Role.USER, "now"))
    assert (spec.request_id, spec.model.name) == ("t", "demo")


def test_a_turn_is_checked_with_its_own_model_and_the_bytes_left_after_the_system_prompt() -> None:
    session = options(pb.SessionStart(model="demo", system_prompt="s" * 10))
    with pytest.raises(InvalidRequest) as error:
        wire.turn_spec(
            turn(content="x" * 95, model="small", config=pb.GenerationConfig(max_tokens=11)),
            session,
            catalog=Catalog(),
            max_request_bytes=100,
        )
    assert fields(error) == ["messages", "config.max_tokens"]
    assert "the limit is 90" in error.value.message


def test_an_empty_turn_is_reported_against_content() -> None:
    with pytest.raises(InvalidRequest) as error:
        wire.turn_spec(turn(), options(pb.SessionStart(model="demo")), catalog=Catalog(), max_request_bytes=100)
    assert fields(error) == ["content"]


SESSION = SamplingParams(temperature=0.5, max_tokens=100, top_p=0.9, stop=("END",))


@pytest.mark.parametrize(
    ("config", "merged"),
    [
        (pb.GenerationConfig(), SESSION),
        (pb.GenerationConfig(temperature=0), SamplingParams(0.0, 100, 0.9, ("END",))),
        (pb.GenerationConfig(max_tokens=5, stop=["X", "Y"]), SamplingParams(0.5, 5, 0.9, ("X", "Y"))),
        (pb.GenerationConfig(top_p=1), SamplingParams(0.5, 100, 1.0, ("END",))),
    ],
    ids=["nothing set", "an explicit zero", "max_tokens and stop", "top_p"],
)
def test_the_fields_a_turn_sets_replace_the_sessions(config: pb.GenerationConfig, merged: SamplingParams) -> None:
    assert wire.merged_params(SESSION, config) == merged


def test_done_carries_usage_cost_and_who_served() -> None:
    finish = Finish(FinishReason.LENGTH, Usage(3, 2, 5), Served("demo", "demo", "demo/demo"), cost_usd=0.25)
    done = wire.done("r", finish, history_trimmed=4).done
    assert (done.request_id, done.finish_reason, done.model, done.provider) == (
        "r",
        pb.FINISH_REASON_LENGTH,
        "demo",
        "demo",
    )
    assert (done.usage.total_tokens, done.usage.cost_usd, done.history_trimmed) == (5, 0.25, 4)


def test_a_cancelled_turn_counts_its_deltas_as_completion_tokens_not_reported_by_the_upstream() -> None:
    done = wire.cancelled("r", "demo", deltas=7, history_trimmed=1).done
    assert done.finish_reason == pb.FINISH_REASON_CANCELLED
    usage = done.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (0, 7, 7)
    assert (usage.estimated, usage.unreported) == (True, False)
    assert not usage.HasField("cost_usd")


def test_turn_error_and_go_away() -> None:
    error = wire.turn_error("r", ShuttingDown("bye")).error
    assert (error.request_id, error.status.code, error.status.message) == ("r", code_pb2.UNAVAILABLE, "bye")
    assert wire.go_away(1.25).go_away.time_left.ToMilliseconds() == 1250
    assert wire.go_away(0).go_away.HasField("time_left")
