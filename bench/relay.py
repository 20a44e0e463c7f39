"""A counting TCP relay: every byte between the bench's clients and one server, counted on the socket.

    async with CountingRelay("127.0.0.1", 50051) as relay:   # listens on 127.0.0.1:<relay.port>
        ...                                                 # clients dial relay.address instead
    relay.bytes_up, relay.bytes_down, relay.connections

What it counts is what TCP carried for the application: HTTP/1.1 headers, chunked framing and SSE text for
an OpenAI-style stream; HTTP/2 frames, HPACK headers and protobuf for gRPC (TLS would add about the same
to both). It runs in the bench's own process, which measures no CPU, and is used for nothing timed.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["CountingRelay"]

_READ_SIZE = 2**16


class CountingRelay:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> CountingRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        pipes = (
            asyncio.create_task(self._pipe(reader, up_writer, up=True)),
            asyncio.create_task(self._pipe(up_reader, writer, up=False)),
        )
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        try:
            while data := await reader.read(_READ_SIZE):
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
