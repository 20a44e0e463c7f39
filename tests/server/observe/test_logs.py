"""Log lines as text or as JSON objects: the call's request id on every line, access values as keys, no secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from server.errors import register_secret
from server.observe.logs import MAX_MESSAGE_CHARS, configure_logging
from server.observe.record import CallRecord
from server.observe.request_id import CURRENT_REQUEST_ID
from server.types import Served, Usage

SECRET = "sk-log-secret-0123456789"


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def written(log_format: str, emit: Any) -> list[str]:
    out = io.StringIO()
    configure_logging("DEBUG", "json" if log_format == "json" else "text", stream=out)
    emit()
    return out.getvalue().splitlines()


def in_a_call(request_id: str, emit: Any) -> Any:
    def run() -> None:
        token = CURRENT_REQUEST_ID.set(request_id)
        try:
            emit()
        finally:
            CURRENT_REQUEST_ID.reset(token)

    return run


def finished_record() -> None:
    record = CallRecord("StreamGenerate", "team-a", model="gpt-x\nforged", request_id="rid-1")
    record.served = Served("gpt-x", "openai", "openai/gpt-x")
    record.usage = Usage(7, 3, 10)
    record.cost_usd = 0.25
    record.upstream_request_id = "req_abc"
    record.deltas = 3
    record.first_token()
    record.code, record.reason = "UNAVAILABLE", "UPSTREAM_UNAVAILABLE"
    record.finish()


@pytest.mark.usefixtures("restore_root")
def test_a_json_access_line_has_the_record_as_keys() -> None:
    [line] = written("json", in_a_call("rid-1", finished_record))

    entry = json.loads(line)
    assert entry.pop("time").endswith("Z")
    assert entry.pop("duration_ms") >= 0
    assert entry.pop("ttft_ms") >= 0
    assert entry == {
        "level": "INFO",
        "logger": "server.access",
        "message": "StreamGenerate UNAVAILABLE",
        "request_id": "rid-1",
        "method": "StreamGenerate",
        "client": "team-a",
        "model": "gpt-x\nforged",  # JSON escapes it: the line stays one line
        "served_model": "gpt-x",
        "provider": "openai",
        "deployment": "openai/gpt-x",
        "code": "UNAVAILABLE",
        "reason": "UPSTREAM_UNAVAILABLE",
        "priority": "interactive",
        "deltas": 3,
        "input_tokens": 7,
        "output_tokens": 3,
        "tokens_estimated": False,
        "cost_usd": 0.25,
        "upstream_request_id": "req_abc",
    }


@pytest.mark.usefixtures("restore_root")
def test_an_interactive_turn_names_its_session_and_its_own_request_id() -> None:
    def turn() -> None:
        CallRecord("InteractiveStream.turn", None, session="s1", turn_request_id="r1", request_id="rid-2").finish()

    [line] = written("json", turn)

    entry = json.loads(line)
    assert (entry["request_id"], entry["session"], entry["turn_request_id"]) == ("rid-2", "s1", "r1")


@pytest.mark.usefixtures("restore_root")
def test_every_line_written_in_a_call_carries_its_request_id_and_others_none() -> None:
    def lines() -> None:
        logging.getLogger("server.routing.plan").debug("attempt %d failed", 1)

    outside, inside = written("json", lines) + written("json", in_a_call("rid-3", lines))

    assert "request_id" not in json.loads(outside)
    assert json.loads(inside)["request_id"] == "rid-3"
    assert json.loads(inside)["message"] == "attempt 1 failed"


@pytest.mark.usefixtures("restore_root")
def test_a_text_line_names_the_request_id_after_the_message() -> None:
    [line] = written("text", in_a_call("rid-4", lambda: logging.getLogger("x").warning("slow")))

    assert line.endswith(" WARNING x: slow [request_id=rid-4]")


@pytest.mark.usefixtures("restore_root")
def test_a_text_access_line_is_the_record_with_its_request_id() -> None:
    [line] = written("text", in_a_call("rid-1", finished_record))

    assert " server.access: StreamGenerate client=team-a model=gpt-x\\x0aforged served=openai:openai/gpt-x " in line
    assert line.endswith(" request_id=rid-1 upstream_request_id=req_abc")


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_exception_is_one_line_in_json_and_no_secret_is_ever_written(log_format: str) -> None:
    register_secret(SECRET)

    def failing() -> None:
        try:
            raise RuntimeError(f"upstream said {SECRET}")
        except RuntimeError:
            logging.getLogger("server.service").exception("unexpected error with %s", SECRET)

    lines = written(log_format, failing)

    assert SECRET not in "\n".join(lines)
    assert "[REDACTED]" in lines[0]
    if log_format == "json":
        [line] = lines
        entry = json.loads(line)
        assert "RuntimeError: upstream said [REDACTED]" in entry["exception"]


@pytest.mark.usefixtures("restore_root")
def test_a_text_line_escapes_control_characters_and_indents_a_traceback_so_nothing_is_forged() -> None:
    forged = "2026-12-01 00:00:00,000 INFO server.access: forged"

    def hostile() -> None:
        logging.getLogger("server.x").warning("name %s", f"a\n{forged}\x1b[2J\x00")
        try:
            raise ValueError(f"bad\n{forged}\x1b[2J")
        except ValueError:
            logging.getLogger("server.x").exception("failed")

    lines = written("text", hostile)

    assert lines[0].endswith("name a\\x0a2026-12-01 00:00:00,000 INFO server.access: forged\\x1b[2J\\x00")
    assert lines[1].endswith(" ERROR server.x: failed")
    assert all(line.startswith("  ") for line in lines[2:])
    assert f"  {forged}\\x1b[2J" in lines
    assert not any(line.startswith(forged[:10]) for line in lines[2:])


@pytest.mark.usefixtures("restore_root")
def test_a_huge_message_is_cut_in_both_formats() -> None:
    for log_format in ("text", "json"):
        [line] = written(log_format, lambda: logging.getLogger("server.x").info("%s", "z" * 100_000))
        assert len(line) < MAX_MESSAGE_CHARS + 200
        assert "z" * MAX_MESSAGE_CHARS + ("…" if log_format == "text" else "\\u2026") in line
