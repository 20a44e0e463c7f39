"""python -m bench.stream_memory [--streams N] [--read-buffer-bytes B ...] [--transport aiohttp|httpx]:
what one stream costs the gateway's memory when its client stops reading.

For each read buffer size: a gateway process in front of the fake OpenAI upstream (`tokens-1000000`, written
as fast as the socket takes it), N StreamGenerate calls that each read their first message and then
nothing, and the gateway's RSS growth once it is steady, per stream. Prints one line per size:

    transport=aiohttp read_buffer_bytes=65536 streams=100 rss_before=56.6MiB after=109.0MiB per_stream=537KiB

The kernel's socket buffers are not in the RSS; they come on top.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import grpc

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from tests.process import run_gateway

__all__ = ["main"]

# RSS is steady when four readings half a second apart differ by less than this.
_STEADY_BYTES = 256 * 1024
_STEADY_READINGS = 4


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def _steady_rss(pid: int) -> int:
    last, same = _rss(pid), 0
    while same < _STEADY_READINGS:
        await asyncio.sleep(0.5)  # a measurement, not a synchronisation: RSS has no event to wait on
        now = _rss(pid)
        same = same + 1 if abs(now - last) < _STEADY_BYTES else 0
        last = now
    return last


async def _measure(upstream_url: str, read_buffer: int, streams: int, transport: str) -> str:
    config = Path(tempfile.mkdtemp()) / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "providers:\n"
        f"  - {{name: up, kind: openai, base_url: '{upstream_url}', transport: {transport}, "
        f"read_buffer_bytes: {read_buffer}, max_connections: {max(streams, 1)}}}\n"
        "models:\n"
        "  - {name: m, provider: up, upstream_model: tokens-1000000}\n"
    )
    async with run_gateway("--config", str(config)) as gateway:
        address = await gateway.wait_ready()
        pid = gateway.process.pid
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            before = await _steady_rss(pid)
            request = pb.StreamGenerateRequest(model="m", messages=[pb.Message(role="user", content="x")])
            calls = []
            for _ in range(streams):
                call = stub.StreamGenerate(request)
                await call.read()  # the first message, then nothing more
                calls.append(call)
            after = await _steady_rss(pid)
            for call in calls:
                call.cancel()
    return (
        f"transport={transport} read_buffer_bytes={read_buffer} streams={streams} "
        f"rss_before={before / 2**20:.1f}MiB after={after / 2**20:.1f}MiB "
        f"per_stream={(after - before) / streams / 1024:.0f}KiB"
    )


async def _run(args: argparse.Namespace) -> None:
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openai_upstream", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert upstream.stdout is not None
        port = (await upstream.stdout.readline()).decode().split()[1]  # "PORT <n>"
        for read_buffer in args.read_buffer_bytes:
            print(await _measure(f"http://127.0.0.1:{port}/v1", read_buffer, args.streams, args.transport), flush=True)
    finally:
        upstream.kill()
        await upstream.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=100, help="streams whose clients stop reading (100)")
    parser.add_argument(
        "--read-buffer-bytes", type=int, nargs="+", default=[262144, 65536, 16384], help="sizes to measure"
    )
    parser.add_argument("--transport", choices=("aiohttp", "httpx"), default="aiohttp")
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
