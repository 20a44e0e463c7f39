"""Request validation: every violation is listed at once, with the field it concerns."""

from __future__ import annotations

import pytest

from server.errors import FieldViolation, InvalidRequest, ModelNotFound
from server.types import ChatMessage, Role, SamplingParams
from server.validation import UncheckedMessage, check_request

HELLO = [UncheckedMessage("user", "hello")]


def check(
    *,
    model: str = "demo",
    messages: list[UncheckedMessage] | None = None,
    params: SamplingParams | None = None,
    model_max_tokens: int | None = 32_000,
    max_content_bytes: int = 1024,
) -> tuple[ChatMessage, ...]:
    return check_request(
        model=model,
        known_models=["demo", "gpt-4.1"],
        model_max_tokens=model_max_tokens,
        messages=HELLO if messages is None else messages,
        params=params or SamplingParams(),
        max_content_bytes=max_content_bytes,
    )


def violations_of(**kwargs: object) -> list[FieldViolation]:
    with pytest.raises(InvalidRequest) as raised:
        check(**kwargs)  # type: ignore[arg-type]
    return list(raised.value.violations)


def test_a_valid_request_returns_typed_messages() -> None:
    messages = [UncheckedMessage("system", "be brief"), UncheckedMessage("user", "hi", "alice")]
    assert check(messages=messages) == (
        ChatMessage(Role.SYSTEM, "be brief"),
        ChatMessage(Role.USER, "hi", "alice"),
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (SamplingParams(temperature=-0.1), "config.temperature"),
        (SamplingParams(temperature=2.01), "config.temperature"),
        (SamplingParams(temperature=float("nan")), "config.temperature"),
        (SamplingParams(top_p=0.0), "config.top_p"),
        (SamplingParams(top_p=1.5), "config.top_p"),
        (SamplingParams(top_p=float("nan")), "config.top_p"),
        (SamplingParams(max_tokens=0), "config.max_tokens"),
        (SamplingParams(max_tokens=32_001), "config.max_tokens"),
        (SamplingParams(stop=("a", "b", "c", "d", "e")), "config.stop"),
        (SamplingParams(stop=("ok", "")), "config.stop[1]"),
    ],
)
def test_out_of_range_options_are_violations(params: SamplingParams, field: str) -> None:
    assert [v.field for v in violations_of(params=params)] == [field]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1),
        SamplingParams(temperature=2.0, top_p=1e-6, max_tokens=32_000, stop=("a", "b", "c", "d")),
    ],
)
def test_boundary_values_are_accepted(params: SamplingParams) -> None:
    assert check(params=params)


def test_a_model_cap_lowers_max_tokens() -> None:
    [violation] = violations_of(params=SamplingParams(max_tokens=5000), model_max_tokens=4096)
    assert violation == FieldViolation("config.max_tokens", "must be in [1, 4096], got 5000")


def test_every_violation_is_listed_at_once() -> None:
    violations = violations_of(
        model="",
        messages=[UncheckedMessage("user", "x"), UncheckedMessage("robot", "y")],
        params=SamplingParams(temperature=3, top_p=0, max_tokens=-1),
    )
    assert [v.field for v in violations] == [
        "model",
        "messages[1].role",
        "config.temperature",
        "config.top_p",
        "config.max_tokens",
    ]
    assert violations[1].description == "must be system, user, assistant or tool, got 'robot'"


def test_no_messages_is_a_violation() -> None:
    assert violations_of(messages=[]) == [FieldViolation("messages", "at least one message is required")]


def test_content_size_is_counted_in_utf8_bytes() -> None:
    assert check(messages=[UncheckedMessage("user", "a" * 1024)], max_content_bytes=1024)
    # 512 two-byte characters are 1024 bytes; one more byte is over.
    assert check(messages=[UncheckedMessage("user", "é" * 512)], max_content_bytes=1024)
    [violation] = violations_of(messages=[UncheckedMessage("user", "é" * 512 + "x")], max_content_bytes=1024)
    assert violation == FieldViolation("messages", "total content is 1025 bytes; the limit is 1024")


def test_an_unknown_model_alone_is_model_not_found_naming_the_known_ones() -> None:
    with pytest.raises(ModelNotFound) as raised:
        check(model="gpt-5-turbo-max", model_max_tokens=None)
    assert raised.value.reason == "MODEL_NOT_FOUND"
    assert raised.value.message == "unknown model 'gpt-5-turbo-max'; known models: demo, gpt-4.1"
    assert raised.value.violations[0].field == "model"


def test_an_unknown_model_among_other_problems_is_one_violation_of_many() -> None:
    with pytest.raises(InvalidRequest) as raised:
        check(model="nope", model_max_tokens=None, params=SamplingParams(temperature=9))
    assert not isinstance(raised.value, ModelNotFound)
    assert [v.field for v in raised.value.violations] == ["model", "config.temperature"]
