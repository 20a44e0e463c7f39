"""The chat's pieces that need no gateway: the transcript it replays into a new session, and the retried open."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from client.chat import Transcript, open_with_retry
from client.errors import InvalidArgumentError, UnavailableError
from client.retry import Retrier, RetryPolicy
from client.sync_interactive import Session
from client.types import FinishReason, Message, TurnResult, Usage


def result(text: str, *, trimmed: int = 0, reason: FinishReason = FinishReason.STOP) -> TurnResult:
    return TurnResult("t1", text, "m", "p", reason, Usage(0, 0, 0), history_trimmed=trimmed)


def test_the_transcript_follows_the_gateways_history() -> None:
    transcript = Transcript()
    transcript.record("one", result("1"))
    transcript.record("two", result("2", trimmed=2))  # the gateway dropped the first exchange
    transcript.record("three", result("", reason=FinishReason.CANCELLED))  # cancelled before a word: nothing kept
    transcript.record("four", result("fo", reason=FinishReason.CANCELLED))  # the part that arrived is kept
    assert transcript.messages == [
        Message("user", "two"),
        Message("assistant", "2"),
        Message("user", "four"),
        Message("assistant", "fo"),
    ]
    assert transcript.pending() == []


def test_after_a_restart_the_next_turn_carries_the_conversation_until_one_is_kept() -> None:
    transcript = Transcript()
    transcript.restart()
    assert transcript.pending() == []  # nothing to carry yet
    transcript.record("one", result("1"))
    transcript.restart()
    carried = [Message("user", "one"), Message("assistant", "1")]
    assert transcript.pending() == carried
    # A failed turn records nothing, so the conversation is still owed to the new session.
    assert transcript.pending() == carried
    transcript.record("two", result("2"))
    assert transcript.pending() == []
    assert transcript.messages == [*carried, Message("user", "two"), Message("assistant", "2")]


def unavailable() -> UnavailableError:
    return UnavailableError(grpc.StatusCode.UNAVAILABLE, "shutting down", reason="SHUTTING_DOWN")


def test_opening_is_retried_with_the_policys_backoff() -> None:
    outcomes: list[Exception | None] = [unavailable(), unavailable(), None]
    sleeps: list[float] = []
    opened = cast("Session", object())

    def start() -> Session:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return opened

    retrier = Retrier(RetryPolicy(max_attempts=5, initial_backoff_s=0.1), 60.0, clock=lambda: 0.0, rng=lambda: 1.0)
    assert open_with_retry(start, None, sleep=sleeps.append, retrier=retrier) is opened
    assert sleeps == [0.1, 0.2]  # full jitter at its ceiling: 0.1 s, doubling


def test_opening_gives_up_after_the_policys_attempts_and_never_retries_other_errors() -> None:
    sleeps: list[float] = []
    attempts: list[int] = []

    def refused() -> Any:
        attempts.append(1)
        raise unavailable()

    with pytest.raises(UnavailableError):
        open_with_retry(refused, RetryPolicy(max_attempts=3), sleep=sleeps.append)
    assert (len(attempts), len(sleeps)) == (3, 2)

    def invalid() -> Any:
        attempts.append(1)
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "unknown model", reason="MODEL_NOT_FOUND")

    attempts.clear()
    with pytest.raises(InvalidArgumentError):
        open_with_retry(invalid, RetryPolicy(), sleep=sleeps.append)
    assert attempts == [1]
