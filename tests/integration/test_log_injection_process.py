"""What a client sends cannot forge a log line, reach a terminal as a control character, or make a huge line
(issue 11, item 6), in text and in JSON, through a real `python -m server`: the access line, the attempt's
DEBUG line and the circuit breaker's lines all carry the client's model name."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2_grpc as pb_grpc
from tests.process import run_gateway
from tests.rpc import unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`

FORGED_TEXT = "2026-12-01 00:00:00,000 INFO server.access: Generate client=admin model=demo code=OK"
FORGED_JSON = '{"time": "2026-12-01T00:00:00.000Z", "level": "INFO", "logger": "server.access", "message": "forged"}'
# A text record starts with its time and level; anything else on a line of its own is a traceback's, indented.
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
LONGEST_LINE = 4096


def config_file(tmp_path: Path, log_format: str) -> Path:
    """The demo, and `dead`, an upstream that refuses connections: a call to it fails, is logged at DEBUG and
    opens its breaker at once."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        f"log: {{level: DEBUG, format: {log_format}}}\n"
        "retry: {max_attempts: 1}\n"
        "circuit_breaker: {consecutive_failures: 1}\n"
        "providers:\n"
        "  - {name: demo, kind: demo}\n"
        "  - {name: dead, kind: openai, base_url: 'http://127.0.0.1:1/v1'}\n"
        "models: [{name: demo, provider: demo}]\n"
    )
    return path


async def hostile_calls(address: str, forged: str) -> None:
    """A failing pass-through call whose model name carries a forged line, ESC and NUL, and a 100 KB name."""
    names = [f"dead/x\x1b[31mred\x00\u2028\n{forged}", "demo/" + "y" * 100_000 + f"\n{forged}"]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AIServiceStub(channel)
        for name in names:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Generate(unary_request(name, "hi"), timeout=30)


async def run_hostile(tmp_path: Path, log_format: str, forged: str) -> list[str]:
    async with run_gateway("--config", str(config_file(tmp_path, log_format))) as gateway:
        await hostile_calls(await gateway.wait_ready(), forged)
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0
    stderr = gateway.stderr
    for raw in ("\x1b", "\x00", "\u2028"):
        assert raw not in stderr
    lines = stderr.splitlines()
    assert max(map(len, lines)) < LONGEST_LINE
    return lines


async def test_text_lines_cannot_be_forged_or_carry_control_characters(tmp_path: Path) -> None:
    lines = await run_hostile(tmp_path, "text", FORGED_TEXT)

    for line in lines:
        assert RECORD_START.match(line) or line.startswith("  "), line
    assert not any(line.startswith(FORGED_TEXT[:23]) for line in lines)
    escaped = "dead/x\\x1b\\x5b31mred\\x00\\u2028\\x0a2026-12-01\\x2000:00:00"
    access = [line for line in lines if " server.access: Generate " in line]
    assert len(access) == 2
    assert f" model={escaped}" in access[0]
    assert "y" * 129 not in access[1]  # cut, and marked
    assert any(f" DEBUG server.routing.plan: attempt 1 of {escaped}" in line for line in lines)
    assert any(f" WARNING server.resilience.breaker: circuit of {escaped}" in line for line in lines)


async def test_json_lines_are_each_one_object_and_carry_control_characters_escaped(tmp_path: Path) -> None:
    lines = await run_hostile(tmp_path, "json", FORGED_JSON)

    entries = [json.loads(line) for line in lines if not line.startswith("gateway:")]
    assert len(entries) == len(lines)
    assert not any(entry.get("message") == "forged" for entry in entries)
    access = [entry for entry in entries if entry["logger"] == "server.access"]
    assert len(access) == 2
    assert access[0]["model"].startswith(f"dead/x\x1b[31mred\x00\u2028\n{FORGED_JSON[:20]}")  # a value in its record
    assert len(access[1]["model"]) <= 129
    attempt = [entry for entry in entries if entry["logger"] == "server.routing.plan"]
    assert attempt
    assert attempt[0]["message"].startswith("attempt 1 of dead/x\\x1b\\x5b31mred\\x00\\u2028\\x0a")
