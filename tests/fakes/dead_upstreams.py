"""Upstreams that fail before HTTP starts, on 127.0.0.1: a refused port, a plaintext server that a TLS
client reaches, a TLS server whose certificate the client does not trust, and a server that accepts and
never answers.

Each is an async context manager that yields its address as a base URL (`http://127.0.0.1:PORT/v1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["SilentServer", "plaintext_server", "refused_port", "serving", "silent_server", "untrusted_tls_server"]


@contextlib.asynccontextmanager
async def refused_port() -> AsyncIterator[str]:
    """A port bound but not listening: every connection to it is refused, and no one else can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def serving(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], **options: Any
) -> AsyncIterator[asyncio.Server]:
    """`asyncio.start_server` whose connections are all closed, and waited for, when the block ends: on
    Python 3.11 the server's own close leaves them to the garbage collector, whose warnings then fail
    whichever test happens to run next."""
    writers: set[asyncio.StreamWriter] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        await handle(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0, **options)
    try:
        async with server:
            yield server
    finally:
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


@contextlib.asynccontextmanager
async def plaintext_server() -> AsyncIterator[str]:
    """An HTTP server that answers whatever arrives, a TLS ClientHello included, with a plaintext 400, as
    real HTTP servers do. Reached with `https://`, the client's TLS handshake fails."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read(1024)
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    async with serving(answer) as server:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


@contextlib.asynccontextmanager
async def untrusted_tls_server(cert_file: Path, key_file: Path) -> AsyncIterator[str]:
    """A TLS server with `cert_file` (signed by a CA the client does not know): the handshake fails."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serving(answer, ssl=context) as server:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


class SilentServer:
    """Accepts connections and reads requests, but never answers. `accepted` is set on the first one."""

    def __init__(self) -> None:
        self.accepted = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.accepted.set()
        await self._closed.wait()
        writer.close()

    def close(self) -> None:
        self._closed.set()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, SilentServer]]:
    silent = SilentServer()
    async with serving(silent.handle) as server:
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", silent
        finally:
            silent.close()
