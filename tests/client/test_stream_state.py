"""StreamState, the stream logic both clients share: events, the end, and retry-or-raise after a failure."""

from __future__ import annotations

import grpc
import pytest

from client.errors import GatewayError, InvalidArgumentError, StreamProtocolError, UnavailableError
from client.retry import Retrier, RetryPolicy
from client.stream_state import StreamState
from client.types import FinishReason, StreamEnd, TextDelta, Usage
from generated import ai_service_pb2 as pb

UNAVAILABLE = UnavailableError(grpc.StatusCode.UNAVAILABLE, "upstream down")
END = pb.StreamChunk(is_complete=True, model="m", provider="p", finish_reason=pb.FINISH_REASON_STOP)


def state(*errors: GatewayError, attempts: int = 5) -> StreamState:
    """A state whose failures turn into `errors`, in order; no jitter, a clock that never moves."""
    queue = list(errors)
    retrier = Retrier(RetryPolicy(max_attempts=attempts), 10.0, clock=lambda: 0.0, rng=lambda: 1.0)
    return StreamState(retrier, lambda exc: queue.pop(0))


def test_a_failure_before_the_first_chunk_is_retried_with_backoff_then_raised() -> None:
    machine = state(UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, attempts=3)
    assert machine.failed(grpc.RpcError()) == pytest.approx(0.1)
    assert machine.failed(grpc.RpcError()) == pytest.approx(0.2)
    assert machine.failed(grpc.RpcError()) is UNAVAILABLE  # the third attempt was the last
    assert machine.closed
    assert machine.remaining() == 10.0


def test_after_the_first_chunk_a_failure_is_raised_at_once() -> None:
    machine = state(UNAVAILABLE)
    assert machine.chunk(pb.StreamChunk(delta="hi")) == TextDelta("hi")
    assert machine.failed(grpc.RpcError()) is UNAVAILABLE
    assert machine.closed


def test_errors_other_than_unavailable_are_never_retried() -> None:
    invalid = InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert state(invalid).failed(grpc.RpcError()) is invalid


def test_the_end_is_the_final_chunk_and_a_missing_one_is_a_protocol_error() -> None:
    machine = state()
    assert machine.chunk(END) == StreamEnd("m", "p", FinishReason.STOP, Usage(0, 0, 0))
    assert machine.end() == machine.result
    assert machine.closed
    with pytest.raises(StreamProtocolError, match="without its final chunk"):
        state().end()


def test_data_after_the_final_chunk_closes_the_stream() -> None:
    machine = state()
    machine.chunk(END)
    with pytest.raises(StreamProtocolError, match="after the final chunk"):
        machine.chunk(pb.StreamChunk(delta="late"))
    assert machine.closed
