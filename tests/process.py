"""`python -m server` as a child process on a free loopback port, for tests of what only a real process does:
exit codes, messages on stderr, signals and graceful shutdown.

    address = f"127.0.0.1:{free_port()}"
    async with run_gateway(tmp_path, "--listen", address) as gateway:
        await gateway.wait_ready(address)   # health Check answers SERVING
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0

A child that must not race another process for its port listens on port 0 and reports the port it bound:

    async with run_gateway(tmp_path, "--listen", "127.0.0.1:0") as gateway:
        address = f"127.0.0.1:{await gateway.bound_port()}"   # from its "listening on" log line
        await gateway.wait_ready(address, credentials=grpc.ssl_channel_credentials(ca))  # a TLS gateway

The child runs with the test's interpreter from the repository root, and with an environment stripped of the
variables the gateway reads (GATEWAY_*, OPENAI_*, OTEL_*), so only what a test passes in `env` reaches it. Its stderr
goes to a file so that a chatty child can never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

__all__ = ["GatewayProcess", "free_port", "health_check", "health_watch", "run_gateway"]

REPO_ROOT = Path(__file__).resolve().parent.parent

# A cold `python -m server` imports grpc, protobuf and httpx: well under a second, with room for a slow CI box.
READY_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.05
# server/app.py logs this at INFO once the port is open: "listening on 127.0.0.1:0 (port 41234, ...".
_LISTENING = re.compile(r"listening on \S+ \(port (\d+),")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "OTEL_"))}
    return {**env, **(extra or {})}


@dataclass
class GatewayProcess:
    process: asyncio.subprocess.Process
    stderr_path: Path

    @classmethod
    async def start(cls, tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> GatewayProcess:
        stderr_path = tmp_path / f"gateway-{time.monotonic_ns()}.stderr"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server",
                *args,
                cwd=REPO_ROOT,
                env=child_env(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        return cls(process, stderr_path)

    @property
    def stderr(self) -> str:
        """Everything the child wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    async def bound_port(self, timeout: float = READY_TIMEOUT_S) -> int:
        """The port the child listens on, read from its log line: start it with `--listen HOST:0` (and at
        log level INFO) so that no other process can take the port between choosing and binding it."""
        deadline = time.monotonic() + timeout
        while not (found := _LISTENING.search(self.stderr)):
            if self.process.returncode is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway logged no 'listening on' line after {timeout} s:\n{self.stderr}")
            await asyncio.sleep(_POLL_INTERVAL_S)
        return int(found.group(1))

    async def wait_ready(
        self,
        address: str,
        timeout: float = READY_TIMEOUT_S,
        *,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Poll the health service at `address` until it answers SERVING; fail if the child exits first.
        `credentials` are the TLS channel credentials of a TLS gateway (health needs no token)."""
        deadline = time.monotonic() + timeout
        if credentials is None:
            channel = grpc.aio.insecure_channel(address)
        else:
            channel = grpc.aio.secure_channel(address, credentials)
        async with channel:
            check = health_check(channel)
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.stderr}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await check(HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"gateway not SERVING on {address} after {timeout} s:\n{self.stderr}")
                await asyncio.sleep(_POLL_INTERVAL_S)

    def send_signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = 5.0) -> int:
        """The exit code (negative: killed by that signal); fails the test when the child outlives `timeout`."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"gateway still running after {timeout} s:\n{self.stderr}") from None

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def run_gateway(
    tmp_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    """Start `python -m server *args`; kill it on the way out if the test left it running."""
    gateway = await GatewayProcess.start(tmp_path, *args, env=env)
    try:
        yield gateway
    finally:
        await gateway.kill()
