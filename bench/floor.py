"""python -m bench.floor --port 0: the floor, a bare grpc.aio server with no upstream and no logic.

It serves AIService's StreamGenerate and Generate through a generic handler whose replies are bytes
serialized once at start-up, so what it costs per token is grpc.aio's own write path and nothing else: the
most Python's gRPC can do on this machine, against which the gateway is measured in the same run.

    tokens-N   N chunks "t0", " t1", ... then the final chunk with usage (as the gateway sends them)
    hold       one chunk, then nothing until the client cancels (the bench's concurrent-streams RSS)

It prints `PORT <n>` once listening and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
from collections.abc import AsyncIterator

import grpc

from generated import ai_service_pb2 as pb

__all__ = ["build_server", "chunks_for", "main"]

SERVICE = "holysheepai.AIService"
MODEL = "floor"
_MAX_TOKENS = 100_000


@functools.lru_cache(maxsize=64)
def chunks_for(model: str) -> tuple[bytes, ...]:
    """The serialized StreamChunks of `model`'s reply; empty for a name the floor does not know."""
    if model == "hold":
        return (pb.StreamChunk(delta="t0", model=MODEL).SerializeToString(),)
    prefix, _, count = model.rpartition("-")
    if prefix != "tokens" or not count.isdigit() or not 0 < int(count) <= _MAX_TOKENS:
        return ()
    n = int(count)
    deltas = [pb.StreamChunk(delta=f" t{i}" if i else "t0", model=MODEL).SerializeToString() for i in range(n)]
    usage = pb.Usage(prompt_tokens=1, completion_tokens=n, total_tokens=n + 1)
    final = pb.StreamChunk(is_complete=True, usage=usage, finish_reason=pb.FINISH_REASON_STOP, model=MODEL)
    return (*deltas, final.SerializeToString())


def _model(request: bytes) -> str:
    return pb.StreamGenerateRequest.FromString(request).model


async def _stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    model = _model(request)
    chunks = chunks_for(model)
    if not chunks:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"the floor serves tokens-N and hold, not {model[:64]!r}")
    for chunk in chunks:
        yield chunk
    if model == "hold":
        await asyncio.Event().wait()  # until the client cancels


async def _generate(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    model = _model(request)
    chunks = chunks_for(model)
    if not chunks or model == "hold":
        await context.abort(grpc.StatusCode.NOT_FOUND, f"the floor's Generate serves tokens-N, not {model[:64]!r}")
    return _unary(model)


@functools.lru_cache(maxsize=64)
def _unary(model: str) -> bytes:
    n = int(model.rpartition("-")[2])
    content = "".join(f" t{i}" if i else "t0" for i in range(n))
    usage = pb.Usage(prompt_tokens=1, completion_tokens=n, total_tokens=n + 1)
    return pb.GenerateResponse(
        content=content, model=MODEL, usage=usage, finish_reason=pb.FINISH_REASON_STOP
    ).SerializeToString()


def _handler() -> grpc.GenericRpcHandler:
    # No (de)serializers: requests arrive as bytes and replies leave as the bytes made above.
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "StreamGenerate": grpc.unary_stream_rpc_method_handler(_stream),
            "Generate": grpc.unary_unary_rpc_method_handler(_generate),
        },
    )


def build_server(host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The floor's server, not started yet, and the port it bound."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(),))
    return server, server.add_insecure_port(f"{host}:{port}")


async def serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server, bound = build_server(host, port)
    await server.start()
    print(f"PORT {bound}", flush=True)
    await stop.wait()
    await server.stop(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
