"""The processes a bench run measures, started once and side by side on the same fake upstream.

    async with Stack.start(workdir, settings) as stack:
        stack.peers["gateway"]      # a Peer: how to reach it, which model names it serves, which process group
        stack.absent                # sides that could not run here, and why ("litellm": "not installed: ...")

Each proxy process leads a process group of its own (`Children` starts it in a new session), so the CPU
and RSS of a proxy with worker processes are those of the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from grpc_health.v1 import health_pb2

from bench import litellm_peer
from bench.otlp_sink import OtlpSink
from bench.procs import REPO_ROOT, Child, Children
from bench.results import Settings

__all__ = ["HOLD_PROMPT", "CpuPlan", "Peer", "Stack", "server_flags"]

# A cold interpreter imports grpc, protobuf and aiohttp in well under a second; this leaves room for a slow box.
READY_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.05
# The gateway's grace period on SIGTERM: the bench stops it only when no call is left.
_GATEWAY_GRACE_S = 1.0
_TTFT_TOKENS = 1  # the shortest stream: TTFT then measures the path, not the stream's length
# The hold scenario: an echo of two words whose second comes after 10 minutes, so every stream has
# delivered its first token through the proxy and then stays open.
HOLD_PROMPT = "hold on"
_HOLD_S = 600.0
_HOLD_MODEL = f"slow-tokens-{round(_HOLD_S * 1000)}"
# Room for the hold scenario's streams in the gateway's upstream pool and in its overload limit.
_MAX_STREAMS = 12_000


def server_flags() -> str:
    """`python -m server --help`: which flags this gateway accepts (--workers comes with another branch)."""
    run = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return run.stdout


@dataclass(frozen=True, slots=True)
class CpuPlan:
    """Which CPUs each child may use; None everywhere when not pinning (or on one CPU)."""

    gateway: frozenset[int] | None = None  # each single-process proxy (gateway, floor, LiteLLM) alone
    others: frozenset[int] | None = None  # the upstream, and the load that goes through a proxy
    # The direct side's load, and the N-worker gateway, may use every CPU.

    @classmethod
    def make(cls, pin: bool) -> CpuPlan:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not pin or len(cpus) < 2:
            return cls()
        return cls(gateway=frozenset(cpus[:1]), others=frozenset(cpus[1:]))

    def load_cpus(self, target: str) -> frozenset[int] | None:
        return None if target == "direct" else self.others

    def describe(self) -> str:
        if self.gateway is None or self.others is None:
            return "none (every process may use every CPU)"
        return (
            f"each proxy on CPU {_cpu_list(self.gateway)} (the N-worker gateway on all); upstream and "
            f"proxy-side load on CPU {_cpu_list(self.others)}; direct-side load on any CPU"
        )


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


@dataclass(frozen=True, slots=True)
class Peer:
    """One side of the bench: what a load process dials and what it asks for."""

    name: str
    protocol: str  # "sse" (OpenAI Chat Completions) or "grpc" (AIService)
    address: str  # a base URL for sse, HOST:PORT for grpc
    prefix: str  # model names are f"{prefix}-{tokens}", or the hold/paced names below
    leader: Child | None  # the proxy's process group leader; None for direct
    api_key: str = ""
    hold_model: str = ""  # what holds a stream open after one token; "" = cannot
    extra: dict[str, str] = field(default_factory=dict)

    def model(self, tokens: int) -> str:
        return f"{self.prefix}-{tokens}"

    @property
    def host_port(self) -> tuple[str, int]:
        hostport = self.address.split("//", 1)[-1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        return host, int(port)


@dataclass(slots=True)
class Stack:
    children: Children
    cpus: CpuPlan
    upstream: Child
    upstream_url: str
    peers: dict[str, Peer]
    absent: dict[str, str]
    workers: int
    metrics_url: str | None

    def load_cpus(self, target: str) -> frozenset[int] | None:
        return self.cpus.load_cpus(target)

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, workdir: Path, settings: Settings, sides: set[str]) -> AsyncIterator[Stack]:
        """Start the upstream and every side in `sides` that can run here."""
        cpus = CpuPlan.make(settings.pin)
        flags = server_flags()
        absent: dict[str, str] = {}
        async with Children(workdir) as children, OtlpSink() as sink:
            upstream = await children.start("upstream", "tests.fakes.openai_upstream", "--port", "0", cpus=cpus.others)
            upstream_url = f"http://127.0.0.1:{await _port_line(upstream)}/v1"
            peers: dict[str, Peer] = {}
            if "direct" in sides:  # no process of its own: the bench's client reads the upstream
                peers["direct"] = Peer("direct", "sse", upstream_url, "tokens", None, hold_model=_HOLD_MODEL)
            # LiteLLM first: it takes most of a minute to import, and the others start meanwhile.
            litellm = None
            if "litellm" in sides:
                litellm = await _start_litellm(children, workdir, upstream_url, settings, cpus, absent)
            starting = _Gateways(children, workdir, upstream_url, settings, cpus)
            peers["gateway"] = await starting.start("gateway")
            gateway = peers["gateway"]
            if "gateway-httpx" in sides:
                peers["gateway-httpx"] = Peer("gateway-httpx", "grpc", gateway.address, "bench-httpx", gateway.leader)
            if "gateway-demo" in sides:
                # The same gateway answering from its offline demo model: its TTFT less the floor's is what the
                # gateway itself adds to a first token; the gateway's less this one is its upstream call.
                peers["gateway-demo"] = Peer("gateway-demo", "grpc", gateway.address, "bench-demo", gateway.leader)
            if "gateway_metrics" in sides:
                # The control run (--metrics-control): the same side with metrics off, not scraped, so that its
                # "metrics on" change is the bench's own noise between two identical gateways.
                metrics = not settings.metrics_control
                peers["gateway_metrics"] = await starting.start("gateway_metrics", metrics=metrics)
            if "gateway_tracing" in sides:
                peers["gateway_tracing"] = await starting.start("gateway_tracing", env=sink.environment())
            if "gateway_asyncio" in sides:
                if "--loop" in flags:
                    peers["gateway_asyncio"] = await starting.start("gateway_asyncio", args=("--loop", "asyncio"))
                else:
                    absent["gateway_asyncio"] = "n/a (no --loop)"
            if "gateway_baseline" in sides and settings.baseline:
                peers["gateway_baseline"] = await starting.start("gateway_baseline", cwd=Path(settings.baseline))
            workers = settings.workers or os.cpu_count() or 1
            if "gateway_workers" in sides:
                if "--workers" in flags:
                    peers["gateway_workers"] = await starting.start(
                        "gateway_workers", args=("--workers", str(workers)), own_port=True
                    )
                else:
                    absent["gateway_workers"] = "n/a (no --workers)"
            if "floor" in sides:
                floor = await children.start("floor", "bench.floor", "--port", "0", cpus=cpus.gateway)
                address = f"127.0.0.1:{await _port_line(floor)}"
                peers["floor"] = Peer("floor", "grpc", address, "tokens", floor, hold_model="hold")
            if litellm is not None:
                child, url = litellm
                if await _wait_litellm(child, url, absent):
                    peers["litellm"] = Peer(
                        "litellm",
                        "sse",
                        url + "/v1",
                        "tokens",
                        child,
                        api_key=litellm_peer.MASTER_KEY,
                        hold_model=_HOLD_MODEL,
                    )
            yield cls(children, cpus, upstream, upstream_url, peers, absent, workers, starting.metrics_url)


async def _port_line(child: Child) -> int:
    word, _, port = (await child.read_line(READY_TIMEOUT_S)).partition(" ")
    if word != "PORT" or not port.isdigit():
        raise child.failure(f"expected 'PORT <n>' on stdout, got {word} {port}")
    return int(port)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Gateways:
    """Starts gateway processes of one config (each side may add metrics, tracing, flags)."""

    def __init__(self, children: Children, workdir: Path, upstream_url: str, settings: Settings, cpus: CpuPlan) -> None:
        self._children, self._workdir, self._upstream_url = children, workdir, upstream_url
        self._settings, self._cpus = settings, cpus
        self.metrics_url: str | None = None

    async def start(
        self,
        name: str,
        *,
        metrics: bool = False,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        own_port: bool = False,
        cwd: Path = REPO_ROOT,
    ) -> Peer:
        config = self._workdir / f"{name}.yaml"
        raw = gateway_config(self._upstream_url, self._settings)
        if metrics:
            raw["metrics"] = {"listen": "127.0.0.1:0"}
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        # Several workers share one port (SO_REUSEPORT): port 0 would give each its own, so one is chosen here.
        listen = f"127.0.0.1:{_free_port() if own_port else 0}"
        cpus = None if own_port else self._cpus.gateway
        gateway = await self._children.start(
            name,
            "server",
            *("--config", str(config), "--listen", listen, *args),
            stdout=False,
            cpus=cpus,
            env=env,
            cwd=cwd,
        )
        address = await _wait_listening(gateway)
        await _wait_serving(gateway, address)
        if metrics:  # its line comes before the "listening on" one
            found = _METRICS_ON.search(gateway.stderr_path.read_text(errors="replace"))
            if found is None:
                raise gateway.failure("did not say where /metrics is")
            self.metrics_url = found[1]
        return Peer(name, "grpc", address, "bench", gateway, hold_model="bench-hold")


def gateway_config(upstream_url: str, settings: Settings) -> dict[str, Any]:
    """The gateway's config: tokens-N through aiohttp and httpx, a paced model and one that holds."""
    providers = {"bench": "upstream", "bench-httpx": "upstream-httpx"}
    pool = {"max_connections": _MAX_STREAMS}
    # The held streams wait 10 minutes for their second token: their own provider entry lets them (the
    # default idle timer would end them, and its breaker then refuse the rest).
    patient = {"read_timeout_s": _HOLD_S, "stream_idle_timeout_s": _HOLD_S}
    return {
        "grace_period_s": _GATEWAY_GRACE_S,
        "limits": {"max_concurrent_upstream": _MAX_STREAMS},
        "providers": [
            {"name": "upstream", "kind": "openai", "base_url": upstream_url, **pool},  # aiohttp, the default
            {"name": "upstream-httpx", "kind": "openai", "base_url": upstream_url, "transport": "httpx", **pool},
            {"name": "upstream-hold", "kind": "openai", "base_url": upstream_url, **pool, **patient},
            {"name": "demo", "kind": "demo"},  # no upstream at all: the gateway's own share of a first token
        ],
        "models": [
            *(
                {"name": f"{prefix}-{n}", "provider": provider, "upstream_model": f"tokens-{n}"}
                for prefix, provider in providers.items()
                for n in sorted({_TTFT_TOKENS, settings.tokens})
            ),
            {"name": "bench-hold", "provider": "upstream-hold", "upstream_model": _HOLD_MODEL},
            {"name": f"bench-demo-{_TTFT_TOKENS}", "provider": "demo", "upstream_model": "demo"},
            {"name": "bench-paced", "provider": "upstream", "upstream_model": f"slow-tokens-{settings.paced_ms}"},
        ],
    }


# server/app.py's start-up line: "listening on HOST:PORT (...)", with the port the kernel chose for port 0.
_LISTENING = re.compile(r" listening on (\S+:\d+) ")
# And before it, with metrics on: "metrics on http://HOST:PORT/metrics".
_METRICS_ON = re.compile(r" metrics on (http://\S+:\d+/metrics)")


async def _wait_listening(gateway: Child) -> str:
    """The address the gateway says it bound (it listens on port 0: a port picked here could be taken first)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while gateway.process.returncode is None and time.monotonic() < deadline:
        if found := _LISTENING.search(gateway.stderr_path.read_text(errors="replace")):
            return found[1]
        await asyncio.sleep(_POLL_INTERVAL_S)
    if gateway.process.returncode is None:
        raise gateway.failure(f"did not say where it listens within {READY_TIMEOUT_S:.0f} s")
    raise gateway.failure("exited before it listened")


async def _wait_serving(gateway: Child, address: str) -> None:
    """Poll the gateway's health service until it answers SERVING; BenchError if it exits or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    request = health_pb2.HealthCheckRequest(service="")
    async with grpc.aio.insecure_channel(address) as channel:
        # By method path: types-grpcio-health-checking's HealthStub declares no methods.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while gateway.process.returncode is None and time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                if (await check(request, timeout=1.0)).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(_POLL_INTERVAL_S)
    if gateway.process.returncode is None:
        raise gateway.failure(f"not SERVING on {address} within {READY_TIMEOUT_S:.0f} s")
    await gateway.process.wait()
    raise gateway.failure(f"exited before it was SERVING on {address}")


async def _start_litellm(
    children: Children, workdir: Path, upstream_url: str, settings: Settings, cpus: CpuPlan, absent: dict[str, str]
) -> tuple[Child, str] | None:
    program = litellm_peer.executable()
    if program is None:
        absent["litellm"] = litellm_peer.HOW_TO_GET
        return None
    models = [f"tokens-{n}" for n in sorted({_TTFT_TOKENS, settings.tokens})] + [_HOLD_MODEL]
    config = workdir / "litellm.yaml"
    config.write_text(yaml.safe_dump(litellm_peer.config(upstream_url, models), sort_keys=False))
    port = _free_port()
    child = await children.start(
        "litellm",
        "",
        *litellm_peer.arguments(config, port),
        program=str(program),
        stdout=False,
        cpus=cpus.gateway,
        env=litellm_peer.environment(),
    )
    return child, f"http://127.0.0.1:{port}"


async def _wait_litellm(child: Child, url: str, absent: dict[str, str]) -> bool:
    """True once LiteLLM answers its liveness probe; False (and why, in `absent`) if it exits or never does."""
    deadline = time.monotonic() + litellm_peer.READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while child.process.returncode is None and time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/health/liveliness", timeout=aiohttp.ClientTimeout(total=2)) as reply:
                    if reply.status == 200:
                        return True
            await asyncio.sleep(0.5)
    tail = child.stderr_tail(3).replace("\n", " | ")
    absent["litellm"] = f"did not start: {tail[-200:]}" if child.process.returncode is not None else "did not start"
    return False
