"""The bounded FIFO between an InteractiveStream session's producers (turns, the reader) and its writer.

    outbox = Outbox(64)
    await outbox.put(message)      # waits while 64 messages are buffered: this is the backpressure
    outbox.push(message)           # appends even when full (the one go_away of a draining session)
    outbox.close()                 # the writer ends after the buffered messages
    outbox.fail(error)             # the writer raises `error` at once; buffered messages are dropped
    while (message := await outbox.get()) is not None: ...

Messages put after `close` or `fail` are dropped: the stream is ending and nobody will read them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Outbox"]

T = TypeVar("T")


class Outbox(Generic[T]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[T] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, item: T) -> None:
        while len(self._items) >= self.size and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        self.push(item)

    def push(self, item: T) -> None:
        if not self._closed:
            self._items.append(item)
            self._readable.set()

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._items.clear()
        self.close()

    async def get(self) -> T | None:
        """The next message; None once closed and empty. Raises the error given to `fail`."""
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        if len(self._items) < self.size:
            self._writable.set()
        return item
