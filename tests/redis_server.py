"""A real `redis-server` (Debian's package, installed by `make system-deps`) on a free loopback port, for
the tests of the shared limits store. It keeps nothing on disk and goes away with the test."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["RedisServer", "run_redis"]

_READY = b"Ready to accept connections"
_START_TIMEOUT_S = 60.0  # only against a hang


class RedisServer:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def run_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is missing: `make system-deps` installs it"
    for _ in range(3):  # a port free when probed may be taken before redis binds it: try another
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            binary,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(tmp_path), "--loglevel", "notice"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        said = b""
        while line := await asyncio.wait_for(process.stdout.readline(), _START_TIMEOUT_S):
            said += line
            if _READY in line:
                break
        if _READY in said:
            break
        await process.wait()
    else:
        raise AssertionError(f"redis-server did not start:\n{said.decode(errors='replace')}")
    drain = asyncio.create_task(process.stdout.read())  # never let it block on a full pipe
    try:
        yield RedisServer(process, port)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
