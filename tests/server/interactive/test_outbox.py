"""The bounded queue between a session's producers and its writer."""

from __future__ import annotations

import asyncio

import pytest

from server.interactive.outbox import Outbox


async def drain(outbox: Outbox[int]) -> list[int]:
    items = []
    while (item := await outbox.get()) is not None:
        items.append(item)
    return items


async def test_put_waits_while_the_outbox_is_full() -> None:
    outbox: Outbox[int] = Outbox(2)
    await outbox.put(1)
    await outbox.put(2)
    third = asyncio.create_task(outbox.put(3))
    await asyncio.sleep(0)  # the put runs until it waits: only a get can release it, however long this takes
    assert not third.done()
    assert len(outbox) == 2

    assert await outbox.get() == 1
    await asyncio.wait_for(third, 1)
    outbox.close()
    assert await drain(outbox) == [2, 3]


async def test_push_ignores_the_bound() -> None:
    outbox: Outbox[int] = Outbox(1)
    await outbox.put(1)
    outbox.push(2)
    outbox.close()
    assert await drain(outbox) == [1, 2]


async def test_close_lets_the_reader_take_what_is_buffered_then_ends_it() -> None:
    outbox: Outbox[int] = Outbox(4)
    reader = asyncio.create_task(drain(outbox))
    await outbox.put(1)
    await outbox.put(2)
    outbox.close()
    await outbox.put(3)  # dropped: the stream is ending
    assert await asyncio.wait_for(reader, 1) == [1, 2]
    assert outbox.closed


async def test_fail_drops_what_is_buffered_and_raises_at_the_reader() -> None:
    outbox: Outbox[int] = Outbox(1)
    await outbox.put(1)
    blocked = asyncio.create_task(outbox.put(2))
    await asyncio.sleep(0)
    outbox.fail(ValueError("broken"))
    await asyncio.wait_for(blocked, 1)  # a waiting producer is released
    with pytest.raises(ValueError, match="broken"):
        await outbox.get()
    assert len(outbox) == 0


async def test_a_waiting_reader_wakes_for_the_first_item() -> None:
    outbox: Outbox[str] = Outbox(1)
    reader = asyncio.create_task(outbox.get())
    await asyncio.sleep(0)
    await outbox.put("x")
    assert await asyncio.wait_for(reader, 1) == "x"
