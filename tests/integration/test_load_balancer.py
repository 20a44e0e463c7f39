"""Two gateway processes behind a real load balancer (nginx, started by tests/nginx.py): what clients see when
one instance is killed, drained or added, and how one client's limit holds across both when they share one
Redis (tests/redis_server.py), before and after one of them is killed.

Each instance has its own fake upstream, so which instance served a call is read from which upstream
recorded its prompt (each call's prompt is unique), and which instance refused a call over a limit from its
own metrics: no gateway feature exists for the test's sake. The
instances run `python -m server` (tests/process.py), nginx speaks h2c to them with `grpc_pass`
(or, for the connection-age test, plain TCP round robin per connection, as an L4 balancer does).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from client import AsyncAIClient
from client.errors import GatewayError
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from tests.conftest import ENDLESS, UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.metrics import scrape_port
from tests.nginx import grpc_proxy, run_nginx, tcp_proxy
from tests.process import SAFETY_TIMEOUT_S, GatewayProcess, run_gateway
from tests.redis_server import run_redis
from tests.rpc import StreamOutcome, collect_stream, detail, error_info, request, rich_status

pytestmark = pytest.mark.slow  # gateway processes and nginx

Call = grpc.aio.UnaryStreamCall[pb.StreamGenerateRequest, pb.StreamChunk]


@dataclass
class Instance:
    """One gateway process and the fake upstream only it calls."""

    name: str
    upstream: FakeOpenAIUpstream
    process: GatewayProcess
    address: str

    def prompts(self) -> list[str]:
        """The prompts of the calls this instance served (or is serving), in order."""
        return [r.body["messages"][-1]["content"] for r in self.upstream.requests]


def gateway_config(path: Path, upstream: FakeOpenAIUpstream, upstream_model: str, extra: str) -> Path:
    """Model "chat" served by `upstream_model` of `upstream`; one upstream attempt per call."""
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "grace_period_s: 300\n"  # a drain here never comes near it
        "retry: {max_attempts: 1}\n"
        "providers:\n"
        f"  - {{name: fake, kind: openai, base_url: '{upstream.base_url}', api_key_env: FAKE_KEY}}\n"
        "models:\n"
        f"  - {{name: chat, provider: fake, upstream_model: {upstream_model}}}\n"
        f"{extra}"
    )
    return path


@contextlib.asynccontextmanager
async def instances(
    tmp_path: Path, upstream_models: Iterable[str], extra: str = "", env: Mapping[str, str] | None = None
) -> AsyncIterator[list[Instance]]:
    """One ready gateway process per upstream model, each with its own fake upstream; `env` for both."""
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for n, model in enumerate(upstream_models):
            name = "ab"[n]
            upstream = await stack.enter_async_context(FakeOpenAIUpstream(api_key=UPSTREAM_KEY))
            config = gateway_config(tmp_path / f"{name}.yaml", upstream, model, extra)
            process = await stack.enter_async_context(
                run_gateway("--config", str(config), env={"FAKE_KEY": UPSTREAM_KEY, **(env or {})})
            )
            started.append(Instance(name, upstream, process, await process.wait_ready()))
        yield started


async def read_all(call: Call, outcome: StreamOutcome) -> StreamOutcome:
    """The rest of `call` into `outcome` (read with read(): a test may have read its first chunk so)."""
    try:
        while isinstance(chunk := await call.read(), pb.StreamChunk):
            outcome.chunks.append(chunk)
    except grpc.aio.AioRpcError as exc:
        outcome.error = exc
    return outcome


def echoed(prompt: str, outcome: StreamOutcome) -> bool:
    """The whole echo of `prompt`, then the final chunk: what the fake's echo model sends."""
    return outcome.error is None and "".join(outcome.deltas) == prompt and len(outcome.finals) == 1


async def test_sigkill_of_one_instance_fails_only_its_calls_in_flight_and_new_calls_go_to_the_survivor(
    tmp_path: Path,
) -> None:
    # On A, "chat" sends its first word and then nothing for an hour: A's calls are mid-stream when A dies.
    # On B, "chat" echoes, but only once the test lets B's upstream answer: B's calls are in flight too.
    async with instances(tmp_path, [ENDLESS, "gpt-test"]) as (a, b):
        b.upstream.hold()
        workdir = tmp_path / "nginx"
        async with (
            run_nginx(workdir, grpc_proxy(workdir, [a.address, b.address])) as nginx,
            # nginx 1.22 sends the reset of a stream whose upstream died with its next write on that client
            # connection: a client that pings (the project's clients do, every 30 s) sees it within one ping interval.
            grpc.aio.insecure_channel(nginx.address, options=[("grpc.keepalive_time_ms", 1000)]) as channel,
        ):
            stub = pb_grpc.AIServiceStub(channel)
            prompts = [f"call{i} of the load" for i in range(8)]
            calls = {p: stub.StreamGenerate(request("chat", p), timeout=SAFETY_TIMEOUT_S) for p in prompts}
            await a.upstream.wait_for_requests(4)  # round robin: four calls each
            await b.upstream.wait_for_requests(4)
            on_a, on_b = a.prompts(), b.prompts()
            assert sorted(on_a + on_b) == sorted(prompts)
            outcomes = {p: StreamOutcome() for p in prompts}
            for p in on_a:  # each of A's calls has its first word
                first = await calls[p].read()
                assert isinstance(first, pb.StreamChunk)
                outcomes[p].chunks.append(first)

            a.process.send_signal(signal.SIGKILL)
            cut = await asyncio.gather(*(read_all(calls[p], outcomes[p]) for p in on_a))
            b.upstream.release()
            survived = await asyncio.gather(*(read_all(calls[p], outcomes[p]) for p in on_b))
            later = [f"after{i} the kill" for i in range(8)]
            after = await asyncio.gather(*(collect_stream(stub, request("chat", p)) for p in later))

        # nginx resets the client's stream when its upstream connection dies: never a silent OK.
        for p, outcome in zip(on_a, cut, strict=True):
            assert outcome.deltas == [p.split(" ")[0]], p
            assert outcome.error is not None
            assert outcome.error.code() == grpc.StatusCode.INTERNAL
            assert "RST_STREAM" in (outcome.error.details() or "")
        assert all(echoed(p, o) for p, o in zip(on_b, survived, strict=True))
        assert all(echoed(p, o) for p, o in zip(later, after, strict=True))
        assert sorted(b.prompts()[-8:]) == sorted(later)
        assert a.prompts() == on_a  # nothing reached A after it died
        assert await a.process.wait_exit() == -signal.SIGKILL


async def drain_load(
    client: AsyncAIClient, callers: int, calls_each: int, marks: dict[int, asyncio.Event]
) -> list[GatewayError | str]:
    """`callers` loops of `calls_each` streams through `client`; each stream's text, or its error. After the
    n-th finished call in all, marks[n] is set."""
    results: list[GatewayError | str] = []

    async def caller(c: int) -> None:
        for i in range(calls_each):
            prompt = f"caller{c} call{i} x y"
            try:
                async with client.stream_generate(prompt, model="chat") as stream:
                    text = "".join([e.text async for e in stream if hasattr(e, "text")])
                results.append(text if text == prompt else f"truncated: {text!r} of {prompt!r}")
            except GatewayError as exc:
                results.append(exc)
            if (mark := marks.get(len(results))) is not None:
                mark.set()

    await asyncio.gather(*(caller(c) for c in range(callers)))
    return results


async def test_draining_an_instance_taken_out_of_rotation_moves_new_calls_to_the_other_with_no_error(
    tmp_path: Path,
) -> None:
    # The drain an nginx operator does, and Kubernetes too (the pod leaves the Service's endpoints, a
    # preStop pause, then SIGTERM): out of the balancer's rotation first, then SIGTERM. A's calls in
    # flight at that moment finish; nothing new reaches A; no client sees an error.
    async with instances(tmp_path, ["slow-tokens-10", "slow-tokens-10"]) as (a, b):
        workdir = tmp_path / "nginx"
        async with (
            run_nginx(workdir, grpc_proxy(workdir, [a.address, b.address])) as nginx,
            AsyncAIClient(target=nginx.address, plaintext=True) as client,
        ):
            started = asyncio.Event()
            load = asyncio.create_task(drain_load(client, callers=8, calls_each=20, marks={40: started}))
            await started.wait()
            a.upstream.hold()  # A's next calls wait for their first token: in flight through the drain
            held = len(a.upstream.requests) + 1
            await a.upstream.wait_for_requests(held)
            await nginx.reload(grpc_proxy(workdir, [a.address, b.address], down=[a.address]))
            served_by_a = len(a.upstream.requests)
            a.process.send_signal(signal.SIGTERM)
            a.upstream.release()
            assert await a.process.wait_exit() == 0
            results = await load

    assert [r for r in results if not isinstance(r, str) or r.startswith("truncated")] == []
    assert len(results) == 160
    # Every call reached one instance, once. A reload leaves nginx's old worker serving the client's open
    # connection until it closes, so a call started just after the reload can still reach A (seen once in
    # about 20 runs beside another suite); it is served like the calls in flight at the SIGTERM.
    assert len(a.upstream.requests) + len(b.upstream.requests) == 160
    assert len(a.upstream.requests) >= served_by_a
    print(f"\ndrain: A served {len(a.upstream.requests)} calls (some in flight through its drain), "
          f"B {len(b.upstream.requests)}; errors: 0")  # fmt: skip


async def test_a_plain_sigterm_behind_nginx_fails_only_calls_that_race_it_before_their_first_chunk(
    tmp_path: Path,
) -> None:
    # Without taking A out of rotation first, nginx (passive health only) keeps sending calls to A until
    # A closes its connections: a call that races A's GOAWAY is refused before any chunk (UNAVAILABLE
    # SHUTTING_DOWN from the gateway, which clients retry, or CANCELLED from gRPC's own shutdown). A call
    # that started on A finishes; no call ends after a chunk with an error, or OK with a cut reply.
    async with instances(tmp_path, ["slow-tokens-10", "slow-tokens-10"]) as (a, b):
        workdir = tmp_path / "nginx"
        async with (
            run_nginx(workdir, grpc_proxy(workdir, [a.address, b.address])) as nginx,
            grpc.aio.insecure_channel(nginx.address) as channel,
        ):
            stub = pb_grpc.AIServiceStub(channel)
            outcomes: dict[str, StreamOutcome] = {}
            signalled = asyncio.Event()

            async def caller(c: int) -> None:
                for i in range(20):
                    prompt = f"caller{c} call{i} x y"
                    outcomes[prompt] = await collect_stream(stub, request("chat", prompt), timeout=SAFETY_TIMEOUT_S)
                    if len(outcomes) == 40:
                        a.process.send_signal(signal.SIGTERM)
                        signalled.set()

            await asyncio.gather(*(caller(c) for c in range(8)))
            assert signalled.is_set()
            assert await a.process.wait_exit() == 0

    refused = {p: o for p, o in outcomes.items() if not echoed(p, o)}
    for prompt, outcome in refused.items():
        assert outcome.chunks == [], prompt
        assert outcome.error is not None
        code = outcome.error.code()
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (prompt, outcome.error)
        if code == grpc.StatusCode.UNAVAILABLE:
            assert error_info(outcome.error).reason == "SHUTTING_DOWN"
    print(f"\nplain SIGTERM: {len(outcomes) - len(refused)} of {len(outcomes)} calls OK, {len(refused)} refused "
          f"before their first chunk: {sorted(o.error.code().name for o in refused.values() if o.error)}")  # fmt: skip


async def on_first_connection(channel: grpc.aio.Channel) -> asyncio.Event:
    """An event set when `channel` (READY now) leaves its first connection."""
    assert channel.get_state() == grpc.ChannelConnectivity.READY
    left = asyncio.Event()

    async def watch() -> None:
        await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        left.set()

    task = asyncio.create_task(watch())
    _watchers.add(task)
    task.add_done_callback(_watchers.discard)
    return left


_watchers: set[asyncio.Task[None]] = set()


async def test_max_connection_age_spreads_long_lived_channels_over_an_instance_added_behind_an_l4_balancer(
    tmp_path: Path,
) -> None:
    # An L4 balancer (nginx stream) picks an instance per TCP connection; a gRPC channel keeps its
    # connection for as long as it lives. Channels connected while only A was there stay on A after B is
    # added, until the gateway's max_connection_age sends them a GOAWAY and they reconnect.
    age_s = 5.0
    extra = f"keepalive: {{max_connection_age_s: {age_s}, max_connection_age_grace_s: 60}}\n"
    async with instances(tmp_path, ["gpt-test", "gpt-test"], extra) as (a, b):
        workdir = tmp_path / "nginx"
        async with run_nginx(workdir, tcp_proxy(workdir, [a.address])) as nginx:
            # Its own connection for each channel (channels of one process share them by default).
            options = [("grpc.use_local_subchannel_pool", 1)]
            channels = [grpc.aio.insecure_channel(nginx.address, options=options) for _ in range(8)]
            try:
                stubs = [pb_grpc.AIServiceStub(channel) for channel in channels]
                for k, stub in enumerate(stubs):
                    assert echoed(f"connect{k} x", await collect_stream(stub, request("chat", f"connect{k} x")))
                first_connections = [await on_first_connection(channel) for channel in channels]

                await nginx.reload(tcp_proxy(workdir, [a.address, b.address]))  # B is added
                before = [f"before{k} x" for k in range(8)]
                outcomes = [
                    await collect_stream(stub, request("chat", p)) for stub, p in zip(stubs, before, strict=True)
                ]
                still_first = [not left.is_set() for left in first_connections]

                for left in first_connections:  # each channel's connection ages out
                    await asyncio.wait_for(left.wait(), SAFETY_TIMEOUT_S)
                after = [f"after{k} x" for k in range(8)]
                outcomes += [
                    await collect_stream(stub, request("chat", p)) for stub, p in zip(stubs, after, strict=True)
                ]
            finally:
                for channel in channels:
                    await channel.close()

    assert all(echoed(p, o) for p, o in zip(before + after, outcomes, strict=True))
    pinned = [p for p, first in zip(before, still_first, strict=True) if first]
    assert pinned, "every channel's first connection aged before B was added: a very slow machine"
    assert set(pinned) <= set(a.prompts())  # on their first connection, every call went to A
    after_a, after_b = len(set(after) & set(a.prompts())), len(set(after) & set(b.prompts()))
    assert after_a >= 2  # round robin over the new connections
    assert after_b >= 2
    before_a = len(set(before) & set(a.prompts()))
    print(f"\nrebalance (8 channels, max_connection_age_s {age_s}): after B was added A {before_a} / B "
          f"{8 - before_a}; after one connection age A {after_a} / B {after_b}")  # fmt: skip


# --- shared limits: both instances on one Redis ------------------------------------------------------------

TEAM_TOKEN = "team-token-0123456789"
TEAM = (("authorization", f"Bearer {TEAM_TOKEN}"),)
_METRICS_ON = re.compile(r"metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics")


@dataclass
class Answer:
    """One call through nginx: its stream, and its trailers when it ended OK."""

    outcome: StreamOutcome
    trailers: dict[str, str]


async def team_call(stub: pb_grpc.AIServiceAsyncStub, prompt: str) -> Answer:
    call = stub.StreamGenerate(request("chat", prompt), metadata=TEAM, timeout=SAFETY_TIMEOUT_S)
    outcome = await read_all(call, StreamOutcome())
    trailers = {} if outcome.error else {k: str(v) for k, v in (await call.trailing_metadata() or ())}
    return Answer(outcome, trailers)


async def quota_rejections(instance: Instance) -> float:
    found = _METRICS_ON.search(instance.process.stderr)
    assert found is not None, instance.process.stderr
    scrape = await scrape_port(int(found["port"]))
    return scrape.value("gateway_quota_rejections_total", client="team", limit="requests_per_minute")


def assert_over_the_limit(answer: Answer, limit: int) -> None:
    """Refused before any chunk, as the Redis-backed limit refuses: QUOTA_EXCEEDED, QuotaFailure, RetryInfo."""
    assert answer.outcome.chunks == []
    error = answer.outcome.error
    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    info = error_info(error)
    assert info.reason == "QUOTA_EXCEEDED"
    assert {k: v for k, v in info.metadata.items() if k != "request_id"} == {
        "limit": "requests_per_minute",
        "subject": "client:team",
        "quota_value": str(limit),
    }
    failure = detail(rich_status(error), error_details_pb2.QuotaFailure)
    assert failure is not None
    [violation] = failure.violations
    assert (violation.subject, violation.quota_id, violation.quota_value) == (
        "client:team",
        "requests_per_minute",
        limit,
    )
    retry = detail(rich_status(error), error_details_pb2.RetryInfo)
    assert retry is not None
    # The bucket gives one request back every 60 / limit seconds; the next one is at most that far away.
    assert 0 < retry.retry_delay.ToMilliseconds() <= 60_000 // limit


async def test_two_instances_behind_nginx_on_one_redis_enforce_one_limit_and_the_survivor_of_a_sigkill_keeps_it(
    tmp_path: Path,
) -> None:
    # A client limited to 2 requests a minute calls through nginx, which alternates its calls over A and B.
    # Each instance alone would let 2 through; on one Redis, 2 succeed in all. Once A is killed, B alone
    # has admitted only 1 itself, yet refuses every further call: the count lives in Redis, not in A.
    # (The bucket refills one request every 30 s: the whole sequence takes a few seconds, even loaded.)
    limit = 2
    async with run_redis(tmp_path) as redis:
        extra = (
            "metrics: {listen: '127.0.0.1:0'}\n"
            f"limits: {{backend: '{redis.url}', backend_unavailable: closed}}\n"
            "clients:\n"
            "  - name: team\n"
            "    tokens: [{env: TEAM_TOKEN}]\n"
            "    models: [chat]\n"
            f"    limits: {{requests_per_minute: {limit}}}\n"
        )
        env = {"TEAM_TOKEN": TEAM_TOKEN}
        async with instances(tmp_path, ["gpt-test", "gpt-test"], extra, env) as (a, b):
            workdir = tmp_path / "nginx"
            async with (
                run_nginx(workdir, grpc_proxy(workdir, [a.address, b.address])) as nginx,
                grpc.aio.insecure_channel(nginx.address) as channel,
            ):
                stub = pb_grpc.AIServiceStub(channel)
                prompts = [f"call{i} of the team" for i in range(2 * limit)]
                answers = [await team_call(stub, p) for p in prompts]  # one after the other: A, B, A, B, ...
                refused_by = {"a": await quota_rejections(a), "b": await quota_rejections(b)}

                a.process.send_signal(signal.SIGKILL)
                assert await a.process.wait_exit() == -signal.SIGKILL
                later = [f"after{i} the kill" for i in range(limit)]
                after = [await team_call(stub, p) for p in later]
                refused_by_b_after = await quota_rejections(b)

    served = [p for p, answer in zip(prompts, answers, strict=True) if answer.outcome.error is None]
    assert served == prompts[:limit]  # exactly `limit` in all, the first ones
    for p in served:
        assert echoed(p, answers[prompts.index(p)].outcome)
    # Remaining requests count down across both instances: one bucket, wherever the call landed.
    remaining = [answers[i].trailers["x-ratelimit-remaining-requests"] for i in range(limit)]
    assert remaining == [str(limit - 1 - i) for i in range(limit)]
    for answer in answers[limit:]:
        assert_over_the_limit(answer, limit)
    # Spread over both instances: the served calls reached both upstreams, the refusals were counted on both.
    assert sorted(a.prompts() + b.prompts()) == sorted(served)
    assert a.prompts()
    assert b.prompts()
    assert refused_by["a"] >= 1
    assert refused_by["b"] >= 1
    assert refused_by["a"] + refused_by["b"] == limit

    # After the SIGKILL: every call reached B (its counter grew by all of them), and B refused them all.
    for answer in after:
        assert_over_the_limit(answer, limit)
    assert refused_by_b_after == refused_by["b"] + limit
    assert sorted(a.prompts() + b.prompts()) == sorted(served)  # nothing more reached an upstream
    print(f"\nshared limit behind nginx: served A {len(a.prompts())} / B {len(b.prompts())}, refused "
          f"A {refused_by['a']:.0f} / B {refused_by['b']:.0f}; after A's SIGKILL B refused {limit}")  # fmt: skip
