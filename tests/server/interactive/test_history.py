"""A conversation's bounded history: what a turn is sent with, and what is trimmed to fit."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest
from server.interactive.history import History, message_bytes
from server.types import ChatMessage, Image, Role

SYSTEM, USER, ASSISTANT = Role.SYSTEM, Role.USER, Role.ASSISTANT


def m(role: Role, content: str) -> ChatMessage:
    return ChatMessage(role, content)


def contents(messages: tuple[ChatMessage, ...]) -> list[str]:
    return [message.content for message in messages]


def grown(history: History, *turns: str) -> History:
    """`history` after turns that each send one user message and get it echoed as the reply."""
    for text in turns:
        history.commit(history.plan([m(USER, text)]), text.upper())
    return history


def test_a_turn_is_sent_after_the_whole_history_while_it_fits() -> None:
    history = grown(History(max_messages=10, max_bytes=1000), "a", "b")
    plan = history.plan([m(USER, "c")])
    assert (contents(plan.messages), plan.trimmed) == (["a", "A", "b", "B", "c"], 0)


def test_commit_appends_the_reply_and_a_failed_turn_changes_nothing() -> None:
    history = History(max_messages=10, max_bytes=1000)
    history.plan([m(USER, "lost")])  # planned, but never committed: the turn failed
    history.commit(history.plan([m(USER, "kept")]), "reply")
    history.commit(history.plan([m(USER, "no reply")]), None)
    assert contents(history.messages) == ["kept", "reply", "no reply"]
    assert [message.role for message in history.messages] == [USER, ASSISTANT, USER]


@pytest.mark.parametrize(
    ("max_messages", "max_bytes", "sent", "trimmed"),
    [
        (5, 1000, ["a", "A", "b", "B", "c"], 0),
        (4, 1000, ["b", "B", "c"], 2),  # dropping a would fit, but a reply may not lead: A goes too
        (3, 1000, ["b", "B", "c"], 2),
        (2, 1000, ["c"], 4),
        (10, 3, ["b", "B", "c"], 2),  # bytes: a A b B c is 5 bytes
        (10, 1, ["c"], 4),
    ],
)
def test_the_oldest_messages_go_first_and_the_count_is_reported(
    max_messages: int, max_bytes: int, sent: list[str], trimmed: int
) -> None:
    history = grown(History(max_messages=10, max_bytes=1000), "a", "b")
    history.max_messages, history.max_bytes = max_messages, max_bytes
    plan = history.plan([m(USER, "c")])
    assert (contents(plan.messages), plan.trimmed) == (sent, trimmed)


def test_system_messages_of_the_conversation_are_never_trimmed() -> None:
    history = History(max_messages=3, max_bytes=1000)
    history.commit(history.plan([m(SYSTEM, "rules"), m(USER, "a")]), "A")
    plan = history.plan([m(USER, "b")])
    assert (contents(plan.messages), plan.trimmed) == (["rules", "b"], 2)


def test_a_turn_that_cannot_fit_alone_is_invalid() -> None:
    history = History(max_messages=2, max_bytes=10)
    with pytest.raises(InvalidRequest, match="the turn has 3 messages of 3 bytes"):
        history.plan([m(USER, "a"), m(ASSISTANT, "b"), m(USER, "c")])
    with pytest.raises(InvalidRequest, match="of 11 bytes"):
        history.plan([m(USER, "x" * 11)])


def test_system_messages_that_fill_the_limits_make_the_turn_invalid() -> None:
    history = History(max_messages=10, max_bytes=10)
    history.commit(history.plan([m(SYSTEM, "x" * 9)]), None)
    with pytest.raises(InvalidRequest, match="system messages"):
        history.plan([m(USER, "hello")])


def test_sizes_are_utf8_bytes_of_content_and_name() -> None:
    assert message_bytes(ChatMessage(USER, "héllo", name="ann")) == 9


def test_images_count_toward_the_history_bytes() -> None:
    images = (Image(data=b"x" * 1000, mime_type="image/png"), Image(url="https://x.test/a.png"))
    assert message_bytes(ChatMessage(USER, "look", images=images)) == 4 + 1000 + 20
