"""The counting relay passes every byte both ways unchanged and counts them, and the connections."""

from __future__ import annotations

import asyncio

from bench.relay import CountingRelay


async def test_the_relay_counts_each_direction_and_each_connection() -> None:
    async def echo_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(5)
        writer.write(data * 2)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(echo_twice, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with CountingRelay("127.0.0.1", port) as relay:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"hello")
            assert await reader.read() == b"hellohello"  # to EOF: the upstream closed, and so did the relay
            writer.close()
            await writer.wait_closed()
    server.close()
    await server.wait_closed()

    assert (relay.bytes_up, relay.bytes_down, relay.connections) == (10, 20, 2)
