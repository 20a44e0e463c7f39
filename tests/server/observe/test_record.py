"""Client-chosen values in a log line are bounded and escaped."""

from __future__ import annotations

import pytest

from server.observe.record import MAX_LOGGED_CHARS, log_value


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("gpt-4.1", "gpt-4.1"),
        ("openai/gpt-4o-mini", "openai/gpt-4o-mini"),
        ("", "-"),
        ("a b", "a\\x20b"),
        ("x\nforged line", "x\\x0aforged\\x20line"),
        ("\x1b[31mred", "\\x1b\\x5b31mred"),
        ("modèle", "mod\\xe8le"),
        ("名", "\\u540d"),
        ("😀", "\\U0001f600"),
    ],
)
def test_values_are_written_plain_or_escaped(value: str, logged: str) -> None:
    assert log_value(value) == logged


def test_a_long_value_is_cut_and_marked() -> None:
    logged = log_value("m" * (MAX_LOGGED_CHARS + 1))
    assert logged == "m" * MAX_LOGGED_CHARS + "…"
