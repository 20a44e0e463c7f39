"""Helpers for tests that call a gateway: channels, stream collection, and decoded error details."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import message as pb_message
from google.rpc import error_details_pb2, status_pb2

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway

M = TypeVar("M", bound=pb_message.Message)


@asynccontextmanager
async def stub_for(gateway: Gateway) -> AsyncIterator[pb_grpc.AIServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.AIServiceStub(channel)


def request(model: str, text: str = "hello brave world", **config: object) -> pb.StreamGenerateRequest:
    return pb.StreamGenerateRequest(
        model=model,
        messages=[pb.Message(role="user", content=text)],
        config=pb.GenerationConfig(**config),  # type: ignore[arg-type]
    )


def unary_request(model: str, text: str = "hello brave world", **config: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model,
        messages=[pb.Message(role="user", content=text)],
        config=pb.GenerationConfig(**config),  # type: ignore[arg-type]
    )


@dataclass
class StreamOutcome:
    """Everything a client saw of one StreamGenerate call."""

    chunks: list[pb.StreamChunk] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None

    @property
    def deltas(self) -> list[str]:
        return [c.delta for c in self.chunks if not c.is_complete and not c.HasField("tool_call")]

    @property
    def tool_pieces(self) -> list[pb.ToolCallDelta]:
        return [c.tool_call for c in self.chunks if c.HasField("tool_call")]

    @property
    def finals(self) -> list[pb.StreamChunk]:
        return [c for c in self.chunks if c.is_complete]


async def collect_stream(
    stub: pb_grpc.AIServiceAsyncStub,
    req: pb.StreamGenerateRequest,
    *,
    timeout: float = 30.0,  # only against a hang: a loaded machine answers in well under it
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> StreamOutcome:
    outcome = StreamOutcome()
    call = stub.StreamGenerate(req, timeout=timeout, metadata=metadata)
    try:
        async for chunk in call:
            outcome.chunks.append(chunk)
    except grpc.aio.AioRpcError as exc:
        outcome.error = exc
    return outcome


def rich_status(error: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carried in its trailers (empty if none)."""
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status()


def detail(status: status_pb2.Status, kind: type[M]) -> M | None:
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            value = kind()
            packed.Unpack(value)
            return value
    return None


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo:
    info = detail(rich_status(error), error_details_pb2.ErrorInfo)
    assert info is not None, f"no ErrorInfo in {error!r}"
    return info
