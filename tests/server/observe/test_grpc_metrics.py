"""The gRPC server metrics' counting context: what it adds to each message a handler writes."""

from __future__ import annotations

import types

from server.observe.grpc_metrics import _Call, _CountingContext


class Context:
    """A servicer context's `write`, recording what it was given."""

    def __init__(self) -> None:
        self.written: list[str] = []

    async def write(self, message: str) -> None:
        self.written.append(message)


async def test_a_write_is_counted_and_awaited_as_grpcs_own_write_with_no_coroutine_of_its_own() -> None:
    context = Context()
    call = _Call.__new__(_Call)  # only its message counts are used
    call.sent = call.received = 0
    counting = _CountingContext(context, call)

    pending = counting.write("one")
    assert isinstance(pending, types.CoroutineType)
    assert pending.cr_code is Context.write.__code__, "the context's own write, not a wrapper around it"
    await pending
    await counting.write("two")

    assert context.written == ["one", "two"]
    assert call.sent == 2
