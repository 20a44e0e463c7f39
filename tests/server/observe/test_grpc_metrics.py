"""The gRPC server metrics' counting context: what it adds to each message a handler writes."""

from __future__ import annotations

import types

from prometheus_client import CollectorRegistry

from server.observe.grpc_metrics import GrpcServerMetrics, _Call, _CountingContext
from server.observe.lean import LEAN


class Context:
    """A servicer context's `write`, recording what it was given."""

    def __init__(self) -> None:
        self.written: list[str] = []

    async def write(self, message: str) -> None:
        self.written.append(message)


async def test_a_write_is_counted_and_awaited_as_grpcs_own_write_with_no_coroutine_of_its_own() -> None:
    context = Context()
    method = GrpcServerMetrics(CollectorRegistry(), LEAN)._method("server_stream", "grpc.health.v1.Health", "Watch")
    call = _Call(method, None, context, writes=True)
    counting = call.context
    assert isinstance(counting, _CountingContext)  # Watch does not count its own writes

    pending = counting.write("one")
    assert isinstance(pending, types.CoroutineType)
    assert pending.cr_code is Context.write.__code__, "the context's own write, not a wrapper around it"
    await pending
    await counting.write("two")

    assert context.written == ["one", "two"]
    assert call.tally.sent == 2
