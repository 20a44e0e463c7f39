"""python -m client chat as a subprocess driven through its stdin, with SIGINT for Ctrl-C."""

from __future__ import annotations

import asyncio
import os
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

    async def end(self) -> tuple[int, str, str]:
        """Close stdin (Ctrl-D), then the exit code and the rest of stdout and stderr."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        out, err = await asyncio.wait_for(self.process.communicate(), TIMEOUT_S)
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()


@asynccontextmanager
async def chat(gateway: Gateway, *args: str) -> AsyncIterator[Chat]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "chat", "--plaintext", "--target", f"127.0.0.1:{gateway.port}", *args,
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


async def test_ctrl_c_at_the_prompt_ends_the_chat(demo_gateway: Gateway) -> None:
    async with chat(demo_gateway) as session:
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
