"""python -m client chat as a subprocess driven through its stdin, with SIGINT for Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from server.app import Gateway
from server.resilience.retry import RetryPolicy
from tests.conftest import ENDLESS, GatewayFactory, openai_config, repo_root
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import assert_no_session_left

TIMEOUT_S = 30.0  # only against a hang: every wait ends on output or an exit


@dataclass
class Chat:
    process: asyncio.subprocess.Process
    stderr_seen: str = ""  # what read_stderr_until has consumed; `end` returns it with the rest

    async def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def read_until(self, text: str) -> str:
        """Read stdout until `text` has appeared; returns what was read."""
        assert self.process.stdout is not None
        seen = b""
        while text.encode() not in seen:
            chunk = await asyncio.wait_for(self.process.stdout.read(64), TIMEOUT_S)
            assert chunk, f"stdout ended before {text!r}: {seen!r}"
            seen += chunk
        return seen.decode()

    async def wait_for_prompt(self, count: int = 1) -> None:
        assert self.process.stderr is not None
        seen = b""
        while seen.count(b"> ") < count:
            seen += await asyncio.wait_for(self.process.stderr.read(1), TIMEOUT_S)

    async def read_stderr_until(self, text: str) -> str:
        """Read stderr until `text` has appeared; returns the line it is on."""
        assert self.process.stderr is not None
        while text not in self.stderr_seen:
            line = await asyncio.wait_for(self.process.stderr.readline(), TIMEOUT_S)
            assert line, f"stderr ended before {text!r}: {self.stderr_seen!r}"
            self.stderr_seen += line.decode()
        return next(line for line in self.stderr_seen.splitlines() if text in line)

    async def end(self) -> tuple[int, str, str]:
        """Close stdin (Ctrl-D), then the exit code and the rest of stdout and stderr (with what
        read_stderr_until consumed)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        out, err = await asyncio.wait_for(self.process.communicate(), TIMEOUT_S)
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), self.stderr_seen + err.decode()


@asynccontextmanager
async def chat(gateway: Gateway, *args: str, sigint_ignored: bool = False) -> AsyncIterator[Chat]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "GRPC_"))}
    command = (sys.executable, "-m", "client", "chat", "--plaintext", "--target", f"127.0.0.1:{gateway.port}", *args)
    if sigint_ignored:  # as a shell without job control starts a background command: `cmd &`
        command = ("sh", "-c", 'trap "" INT; exec "$@"', "sh", *command)
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=repo_root(), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Chat(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_each_line_is_a_turn_of_one_conversation(demo_gateway: Gateway) -> None:
    async with chat(demo_gateway, "--system", "be brief") as session:
        await session.say("hello brave world")
        await session.say("")
        await session.say("second line here")
        code, out, err = await session.end()

    assert (code, out) == (0, "hello brave world\nsecond line here\n")
    lines = err.splitlines()
    assert lines[0].startswith("[chat with demo (session ")
    # The second turn is sent with the system prompt, the first turn and its reply: 2 + 3 + 3 + 3 words.
    assert "> [finish: stop; tokens: 5 prompt + 3 completion = 8; model: demo (demo)]" in lines
    assert "> > [finish: stop; tokens: 11 prompt + 3 completion = 14; model: demo (demo)]" in lines
    await assert_no_session_left(demo_gateway)


async def test_ctrl_c_during_an_answer_cancels_it_and_the_chat_goes_on(
    openai_gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    # ENDLESS: the first word of each answer, then an hour until the next ("after" is one word: it ends).
    async with chat(openai_gateway, "--model", ENDLESS) as session:
        await session.say("one two three four five six seven eight nine ten")
        first = await session.read_until("one")
        session.process.send_signal(signal.SIGINT)
        await fake_openai.wait_for_disconnect()  # only the Ctrl-C can end that answer
        await session.say("after")
        rest = await session.read_until("after")
        code, out, err = await session.end()

    assert code == 0
    answers = (first + rest + out).splitlines()
    assert answers[-1] == "after"
    assert answers[0] == "one"
    assert "[finish: cancelled; tokens: at least " in err
    assert "[finish: stop;" in err
    await assert_no_session_left(openai_gateway)


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "started-with-sigint-ignored"])
async def test_ctrl_c_at_the_prompt_ends_the_chat(demo_gateway: Gateway, sigint_ignored: bool) -> None:
    async with chat(demo_gateway, sigint_ignored=sigint_ignored) as session:
        await session.wait_for_prompt()
        session.process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(session.process.wait(), TIMEOUT_S)
    assert code == 0
    await assert_no_session_left(demo_gateway)


@pytest.fixture
async def no_retry_gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    return await make_gateway(openai_config(fake_openai.base_url, retry=RetryPolicy(max_attempts=1)))


async def test_a_failed_turn_prints_its_error_and_the_chat_goes_on(no_retry_gateway: Gateway) -> None:
    async with chat(no_retry_gateway, "--model", "fault-429") as session:
        await session.say("hello")
        await session.say("again")
        code, out, err = await session.end()

    assert (code, out) == (0, "")
    assert err.count("error: RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED: ") == 2
    assert err.count("  retry after 7 s") == 2


async def test_an_unknown_model_ends_the_chat_with_exit_1(demo_gateway: Gateway) -> None:
    async with chat(demo_gateway, "--model", "nope") as session:
        code, out, err = await session.end()
    assert (code, out) == (1, "")
    assert err.startswith("error: INVALID_ARGUMENT MODEL_NOT_FOUND: unknown model 'nope'")


async def test_a_drain_is_announced_and_the_next_line_continues_the_conversation_in_a_new_session(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    first = await make_gateway(openai_config(fake_openai.base_url))
    address = f"127.0.0.1:{first.port}"
    async with chat(first, "--model", "gpt-test", "--system", "be brief") as session:
        await session.say("hello brave world")
        await session.read_until("hello brave world\n")
        await session.read_stderr_until("[finish: stop;")
        await first.stop(5.0)  # the idle session gets go_away and ends; the gateway is gone
        notice = await session.read_stderr_until("go_away")
        # The gateway comes back (a restart, or the next replica behind the same address).
        await make_gateway(openai_config(fake_openai.base_url, listen=address))
        await session.say("and now?")
        await session.read_until("and now?\n")
        reopened = await session.read_stderr_until("[new session ")
        await session.say("third")
        code, out, err = await session.end()

    assert notice == (
        "[the gateway is shutting down (go_away, 4.8 s left): an answer under way may finish; "
        "the next line goes to a new session, with the conversation so far]"
    )
    assert reopened.endswith("; the conversation so far (2 messages) goes with the next turn]")
    assert (code, out) == (0, "third\n")
    assert "error" not in err
    assert "UNKNOWN" not in err
    # What the upstream received: the second gateway's session had the first one's conversation.
    second_turn, third_turn = (request.body["messages"] for request in fake_openai.requests[-2:])
    conversation = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello brave world"},
        {"role": "assistant", "content": "hello brave world"},
        {"role": "user", "content": "and now?"},
    ]
    assert second_turn == conversation
    assert third_turn == [
        *conversation,
        {"role": "assistant", "content": "and now?"},
        {"role": "user", "content": "third"},
    ]


async def test_when_no_gateway_comes_back_the_chat_ends_with_the_error_instead_of_prompting_on(
    demo_gateway: Gateway,
) -> None:
    async with chat(demo_gateway) as session:
        await session.say("hello")
        await session.read_until("hello\n")
        await demo_gateway.stop(5.0)
        await session.read_stderr_until("go_away")
        await session.say("anyone there?")  # reopening is refused (connection refused) until the retries end
        code = await asyncio.wait_for(session.process.wait(), TIMEOUT_S)
        _, out, err = await session.end()

    assert (code, out) == (1, "")
    last = err.splitlines()[-1]  # after the prompt that read "anyone there?", and nothing after it
    assert last.startswith("> error: UNAVAILABLE: failed to connect to all addresses"), err
    assert last.endswith("Connection refused")
    assert "SESSION_CLOSED" not in err


class Terminal:
    """The chat on a pseudo-terminal (stdin and stderr, where prompt_toolkit draws), answers on a pipe."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.screen = b""
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:  # the child closed its side
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        if b"\x1b[6n" in data:  # prompt_toolkit asks where the cursor is, as a terminal would be asked
            os.write(self.master, b"\x1b[1;1R")
        self.screen += data
        self._changed.set()

    async def until(self, text: bytes, count: int = 1) -> None:
        """Wait until `text` has been drawn `count` times."""
        async with asyncio.timeout(TIMEOUT_S):
            while self.screen.count(text) < count:
                self._changed.clear()
                await self._changed.wait()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)


PROMPT_SHOWN = b"\x1b[?2004h"  # prompt_toolkit turns on bracketed paste each time it shows the prompt
LEFT, UP, ENTER, CTRL_D = b"\x1b[D", b"\x1b[A", b"\r", b"\x04"


async def test_on_a_terminal_lines_are_edited_recalled_and_go_away_shows_above_the_prompt(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway = await make_gateway(openai_config(fake_openai.base_url))
    address = f"127.0.0.1:{gateway.port}"
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "GRPC_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "chat", "--plaintext", "--target", address, "--model", "gpt-test",
        cwd=repo_root(), env={**env, "TERM": "xterm"}, stdin=slave, stderr=slave, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    terminal = Terminal(master)
    assert process.stdout is not None
    try:
        await terminal.until(PROMPT_SHOWN)
        terminal.type(b"hello world" + LEFT * 5 + b"brave " + ENTER)  # arrow keys move, they are not text
        assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT_S) == b"hello brave world\n"
        await terminal.until(PROMPT_SHOWN, 2)

        await gateway.stop(5.0)  # while the prompt waits
        await terminal.until(b"the gateway is shutting down (go_away")
        await make_gateway(openai_config(fake_openai.base_url, listen=address))
        terminal.type(UP + ENTER)  # the line before, recalled
        assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT_S) == b"hello brave world\n"
        await terminal.until(PROMPT_SHOWN, 3)
        terminal.type(CTRL_D)
        assert await asyncio.wait_for(process.wait(), TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        asyncio.get_running_loop().remove_reader(master)
        os.close(master)

    assert b"[new session " in terminal.screen
    assert [r.body["messages"][-1]["content"] for r in fake_openai.requests] == ["hello brave world"] * 2
    assert len(fake_openai.requests[-1].body["messages"]) == 3  # the first exchange went to the new session
