"""`python -m server` as a child process on a port it chooses itself, for tests of what only a real process does:
exit codes, messages on stderr, signals and graceful shutdown.

    async with run_gateway(tmp_path, "--listen", "127.0.0.1:0") as gateway:
        address = await gateway.wait_ready()   # the child's own "listening on 127.0.0.1:PORT" line
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0

The child binds port 0 and says which port it got in its start-up log line; a port picked by the test and
handed over could be taken by another process in between. The child leads a process group of its own, and
`kill` kills the whole group: worker processes the child started die with it, even when a test fails.
The child runs with the test's interpreter from the repository root, and with an environment stripped of the
variables the gateway reads (GATEWAY_*, OPENAI_*, OTEL_*, PROMETHEUS_MULTIPROC_DIR), so only what a test
passes in `env` reaches it. Its stderr is read continuously, so a chatty child can never block on a full pipe.

Every timeout here only keeps a broken child from hanging the suite: each wait ends on an event (a line, an
exit), never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

__all__ = ["SAFETY_TIMEOUT_S", "GatewayProcess", "health_check", "health_watch", "run_gateway", "wait_for_exit_of"]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Only against a hang: a cold start on a loaded 2-core machine takes seconds, never a minute.
SAFETY_TIMEOUT_S = 60.0
# server/app.py's start-up line at INFO: "listening on HOST:PORT (plaintext, no auth); models: ...".
# \b: a text line has a space before it, a JSON line (log.format: json) a quote.
_LISTENING = re.compile(r"\blistening on (?P<address>\S+:(?P<port>\d+)) ")
# A child that logs in a loop must fail its test, not fill the test process's memory: past this much stderr
# the rest is read and dropped.
STDERR_KEPT_BYTES = 16 * 2**20


def health_check(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[HealthCheckRequest, HealthCheckResponse]:
    """grpc.health.v1.Health/Check on `channel` (typed: the grpc_health stubs give HealthStub no methods)."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check", HealthCheckRequest.SerializeToString, HealthCheckResponse.FromString
    )


def health_watch(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryStreamMultiCallable[HealthCheckRequest, HealthCheckResponse]:
    """grpc.health.v1.Health/Watch on `channel`."""
    return channel.unary_stream(
        "/grpc.health.v1.Health/Watch", HealthCheckRequest.SerializeToString, HealthCheckResponse.FromString
    )


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "OTEL_", "PROMETHEUS_"))}
    return {**env, **(extra or {})}


class GatewayProcess:
    """A running `python -m server`; its stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._lines: list[str] = []
        self._kept_bytes = 0
        self._new_line = asyncio.Event()
        self._listening: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str] | None = None) -> GatewayProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            *args,
            cwd=REPO_ROOT,
            env=child_env(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a process group of its own, which `kill` kills whole
        )
        return cls(process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        try:
            while line := await self.process.stderr.readline():
                text = line.decode(errors="replace")
                if self._kept_bytes >= STDERR_KEPT_BYTES:
                    continue
                self._kept_bytes += len(line)
                self._lines.append(text if self._kept_bytes < STDERR_KEPT_BYTES else "[the rest of stderr dropped]\n")
                if not self._listening.done() and (found := _LISTENING.search(text)):
                    self._listening.set_result(found["address"])
                self._new_line.set()
        finally:
            if not self._listening.done():
                self._listening.set_result(None)  # stderr closed: the child is gone without listening
            self._new_line.set()  # wakes a wait_for_line, which then sees the reader is done

    @property
    def stderr(self) -> str:
        """Everything the child wrote to stderr so far (all of it once `wait_exit` returned)."""
        return "".join(self._lines)

    async def wait_ready(self, timeout: float = SAFETY_TIMEOUT_S) -> str:
        """The address the child listens on, once it says so; it is SERVING by then (the line comes after).

        Fails if the child exits first.
        """
        try:
            address = await asyncio.wait_for(asyncio.shield(self._listening), timeout)
        except TimeoutError:
            raise AssertionError(f"gateway did not say where it listens after {timeout} s:\n{self.stderr}") from None
        if address is None:
            code = await self.wait_exit()
            raise AssertionError(f"gateway exited with {code} before listening:\n{self.stderr}")
        return address

    async def wait_for_line(
        self, pattern: str | re.Pattern[str], *, after: int = 0, count: int = 1, timeout: float = SAFETY_TIMEOUT_S
    ) -> re.Match[str]:
        """The `count`-th stderr line matching `pattern`, from line number `after` on, once the child writes
        it; fails when the child's stderr closes first."""
        regex = re.compile(pattern)

        async def found() -> re.Match[str]:
            seen, matches = after, []
            while True:
                matches += [m for line in self._lines[seen:] if (m := regex.search(line))]
                if len(matches) >= count:
                    return matches[count - 1]
                seen = len(self._lines)
                if self._reader.done():
                    raise AssertionError(f"gateway stderr ended without {regex.pattern!r}:\n{self.stderr}")
                self._new_line.clear()
                await self._new_line.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {regex.pattern!r} on stderr after {timeout} s:\n{self.stderr}") from None

    @property
    def line_count(self) -> int:
        """Lines read from stderr so far: `wait_for_line(after=...)` then looks only at later ones."""
        return len(self._lines)

    async def wait_for_lines(self, pattern: str, count: int = 1, timeout: float = SAFETY_TIMEOUT_S) -> list[str]:
        """The first `count` stderr lines that match the regular expression `pattern`, once the child has
        written that many (for what it does after the client has its answer); fails if it exits first."""
        compiled = re.compile(pattern)

        async def matching() -> list[str]:
            while True:
                found = [line for line in self._lines if compiled.search(line)]
                if len(found) >= count:
                    return found[:count]
                if self._reader.done():
                    raise AssertionError(f"gateway exited before writing a line matching {pattern!r}:\n{self.stderr}")
                self._new_line.clear()
                await self._new_line.wait()

        try:
            return await asyncio.wait_for(matching(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {count} lines matching {pattern!r} after {timeout} s:\n{self.stderr}") from None

    def send_signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = SAFETY_TIMEOUT_S) -> int:
        """The exit code (negative: killed by that signal), with all of stderr read; fails the test when the
        child outlives `timeout`."""
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            raise AssertionError(f"gateway still running after {timeout} s:\n{self.stderr}") from None
        return code

    async def kill(self) -> None:
        """SIGKILL to the child's whole process group (its workers too), then reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        with contextlib.suppress(Exception):
            await self._reader


@contextlib.asynccontextmanager
async def run_gateway(*args: str, env: Mapping[str, str] | None = None) -> AsyncIterator[GatewayProcess]:
    """Start `python -m server *args`; kill it on the way out if the test left it running."""
    gateway = await GatewayProcess.start(*args, env=env)
    try:
        yield gateway
    finally:
        await gateway.kill()


async def wait_for_exit_of(pid: int, timeout: float = SAFETY_TIMEOUT_S) -> None:
    """Wait until process `pid` (not necessarily our child: a gateway's worker) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"process {pid} still running after {timeout} s") from None
    finally:
        loop.remove_reader(fd)
        os.close(fd)
