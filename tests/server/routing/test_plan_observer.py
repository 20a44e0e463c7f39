"""What a call plan tells its observer (server/routing/observer.py): every attempt's end exactly once with
its outcome, every retry and every fallback taken, with scripted providers and a fake clock."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from server.errors import UpstreamRejected
from server.resilience.retry import RetryPolicy
from server.routing.catalog import ModelConfig
from server.types import Served
from tests.server.routing.test_plan import REPLY, Setup, chat, interrupted, model, rate_limited, unavailable
from tests.server.scripted import Cut, Stall, Step


class Recorder:
    """A PlanObserver that writes down what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def attempt_ended(self, served: Served, outcome: str) -> None:
        self.events.append(("ended", served.deployment, outcome))

    def retried(self, served: Served) -> None:
        self.events.append(("retried", served.deployment))

    def fell_back(self, origin: ModelConfig, served: Served, failure_class: str) -> None:
        self.events.append(("fell_back", origin.name, served.model, failure_class))


def observed(steps: list[Step], fallback: list[Step] | None = None) -> tuple[Setup, Recorder]:
    models = [model("m", fallbacks=("f",) if fallback else ()), model("f")]
    setup = Setup({"a": {"m": steps, "f": fallback or []}}, models)
    recorder = Recorder()
    setup.resilience.observer = recorder
    return setup, recorder


@pytest.mark.parametrize(
    ("steps", "fallback", "events"),
    [
        ([REPLY], None, [("ended", "a/m", "ok")]),
        (
            [unavailable(), REPLY],
            None,
            [("ended", "a/m", "unavailable"), ("retried", "a/m"), ("ended", "a/m", "ok")],
        ),
        (
            [rate_limited(0.1), unavailable(), unavailable()],
            [REPLY],
            [
                ("ended", "a/m", "rate_limited"),
                ("retried", "a/m"),
                ("ended", "a/m", "unavailable"),
                ("retried", "a/m"),
                ("ended", "a/m", "unavailable"),
                ("fell_back", "m", "f", "unavailable"),
                ("ended", "a/f", "ok"),
            ],
        ),
        ([UpstreamRejected("invalid", provider="a", http_status=400)], [REPLY], [("ended", "a/m", "fatal")]),
        ([Cut(("hello",), interrupted())], None, [("ended", "a/m", "failed_mid_stream")]),
    ],
    ids=["served", "retried", "fell-back", "fatal", "cut-mid-stream"],
)
async def test_each_attempt_ends_once_with_its_outcome(
    steps: list[Step], fallback: list[Step] | None, events: list[tuple[str, ...]]
) -> None:
    setup, recorder = observed(steps, fallback)

    await setup.stream("m")

    assert recorder.events == events


async def test_an_attempt_of_a_cancelled_call_ends_cancelled() -> None:
    setup, recorder = observed([Stall()])
    started = asyncio.Event()

    async def consume() -> None:
        async with aclosing(setup.router.stream(setup.model("m"), chat())) as stream:
            started.set()
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await started.wait()  # the task ran on until its first suspension: the upstream's stall
    assert setup.calls("a", "m") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert recorder.events == [("ended", "a/m", "cancelled")]


async def test_generate_reports_the_same_way() -> None:
    setup, recorder = observed([unavailable()], [REPLY])
    setup.resilience.retry = RetryPolicy(max_attempts=1)

    await setup.complete("m")

    assert recorder.events == [
        ("ended", "a/m", "unavailable"),
        ("fell_back", "m", "f", "unavailable"),
        ("ended", "a/f", "ok"),
    ]
