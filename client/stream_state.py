"""The progress of one StreamGenerate call, shared by the blocking Stream and the asyncio AsyncStream.

A pure state machine: the streams do the I/O (read the next chunk, sleep, start the call again) and ask
it what each outcome means.

    read gave a chunk   ->  chunk(c): the event to yield (and from now on, a failure is never retried)
    read hit the end    ->  end(trailers): the StreamEnd (StreamProtocolError if the final chunk never came)
    read failed         ->  failed(exc): a delay (sleep it, then start the call again with `remaining()`
                            seconds), or the GatewayError to raise

Whether a failure is retried, and how long to wait, is client/retry.py's Retrier: only before the first
chunk, because the caller has seen nothing yet.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from client.errors import GatewayError
from client.retry import Retrier
from client.types import RateLimits, StreamEnd, StreamEvent
from client.wire import Metadata, StreamAssembler, rate_limits
from generated import ai_service_pb2 as pb

__all__ = ["StreamState"]


class StreamState:
    def __init__(self, retrier: Retrier, to_error: Callable[[grpc.RpcError], GatewayError]) -> None:
        self._retrier = retrier
        self._retryable = True  # until the first chunk
        self._to_error = to_error
        self._assembler = StreamAssembler()
        self.closed = False
        self.result: StreamEnd | None = None
        self.rate_limits: RateLimits | None = None

    def remaining(self) -> float:
        """Seconds left until the call's deadline: the timeout of the next start."""
        return self._retrier.remaining()

    def chunk(self, chunk: pb.StreamChunk) -> StreamEvent:
        """The event for `chunk`; raises StreamProtocolError (the stream is then closed) if it breaks the
        contract."""
        self._retryable = False
        try:
            return self._assembler.event(chunk)
        except GatewayError:
            self.closed = True
            raise

    def end(self, trailers: Metadata = ()) -> StreamEnd:
        """The call ended with OK (and these trailers): its StreamEnd, or StreamProtocolError if it never
        sent its final chunk."""
        self.closed = True
        self._retryable = False
        self.rate_limits = rate_limits(trailers)
        self.result = self._assembler.finish()
        return self.result

    def failed(self, exc: grpc.RpcError) -> float | GatewayError:
        """After a failed read: the seconds to wait before starting the call again, or the error to raise."""
        error = self._to_error(exc)
        delay = self._retrier.delay(error, unavailable=True) if self._retryable else None
        if delay is None:
            self.closed = True
            return error
        return delay
