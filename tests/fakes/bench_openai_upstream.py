"""Throughput of the fake upstream on its own: httpx streaming clients against the CLI in a subprocess.

    PYTHONPATH=. .venv/bin/python -m tests.fakes.bench_openai_upstream --concurrency 32 --seconds 5

Counts content deltas (JSON-parsed) of ``tokens-N`` streams; prints one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cpu_seconds(pid: int) -> float:
    """user+system CPU time of a process (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _worker(client: httpx.AsyncClient, model: str, deadline: float, totals: list[int]) -> None:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "bench"}]}
    while time.monotonic() < deadline:
        tokens = 0
        async with client.stream("POST", "/chat/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[6:])["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        tokens += 1
                elif line == "data: [DONE]":
                    totals[1] += 1
        totals[0] += tokens


async def _run(concurrency: int, seconds: float, model: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.openai_upstream",
        "--port",
        "0",
        cwd=str(REPO_ROOT),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        base_url = f"http://127.0.0.1:{int(line[1])}/v1"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            totals = [0, 0]  # tokens, completed streams
            await _worker(client, model, time.monotonic() + 0.3, [0, 0])  # warm-up
            cpu0, client_cpu0 = _cpu_seconds(proc.pid), time.process_time()
            start = time.monotonic()
            deadline = start + seconds
            await asyncio.gather(*(_worker(client, model, deadline, totals) for _ in range(concurrency)))
            elapsed = time.monotonic() - start
            server_cpu = (_cpu_seconds(proc.pid) - cpu0) / elapsed
            client_cpu = (time.process_time() - client_cpu0) / elapsed
        print(
            f"model={model} concurrency={concurrency} elapsed={elapsed:.2f}s streams={totals[1]} "
            f"tokens={totals[0]} -> {totals[0] / elapsed:,.0f} tokens/s, {totals[1] / elapsed:,.1f} streams/s; "
            f"CPU: fake server {server_cpu:.0%}, client {client_cpu:.0%}"
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--model", default="tokens-64")
    args = parser.parse_args()
    asyncio.run(_run(args.concurrency, args.seconds, args.model))


if __name__ == "__main__":
    main()
