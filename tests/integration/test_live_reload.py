"""Live reload of a real `python -m server --config FILE`: SIGHUP, or a change of the file, reloads clients'
tokens, providers, models, deployments and their weights; streams running across a reload finish on what
they started with; a config with problems is refused whole and the running one kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import run_gateway
from tests.rpc import collect_stream, error_info, request, unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`

OLD_TOKEN = "team-token-old-0123456789"
NEW_TOKEN = "team-token-new-0123456789"
UPSTREAM_KEY = "sk-reload-upstream-0123456789"


def token_entry(token: str) -> str:
    return f"    - {{name: team, sha256: {hashlib.sha256(token.encode()).hexdigest()}}}\n"


def write_atomically(path: Path, text: str) -> None:
    """As a deploy tool writes a config: the whole new file, then renamed into place."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


def config_text(upstream: FakeOpenAIUpstream, tokens: list[str], weights: tuple[int, int] = (1, 0)) -> str:
    return (
        "listen: 127.0.0.1:0\n"
        "grace_period_s: 5\n"
        "retry: {max_attempts: 1}\n"
        "auth:\n"
        "  tokens:\n" + "".join(token_entry(t) for t in tokens) + "providers:\n"
        f"  - {{name: fake, kind: openai, base_url: '{upstream.base_url}', api_key_env: FAKE_KEY}}\n"
        "models:\n"
        "  - name: m\n"
        "    deployments:\n"
        f"      - {{provider: fake, upstream_model: tokens-3, weight: {weights[0]}, name: main}}\n"
        f"      - {{provider: fake, upstream_model: tokens-4, weight: {weights[1]}, name: canary}}\n"
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def refused_code(stub: pb_grpc.AIServiceAsyncStub, token: str) -> grpc.StatusCode:
    """How the gateway answers `token` (ListModels: no upstream call, which the held upstream would hold)."""
    try:
        await stub.ListModels(pb.ListModelsRequest(), metadata=bearer(token), timeout=30)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_token_rotation_by_sighup_keeps_a_running_stream_and_refuses_the_old_token_at_the_end(
    tmp_path: Path,
) -> None:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        path = tmp_path / "gateway.yaml"
        path.write_text(config_text(upstream, [OLD_TOKEN]))
        async with run_gateway("--config", str(path), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
            address = await gateway.wait_ready()
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.AIServiceStub(channel)
                upstream.hold()  # the stream's upstream answer waits, so the stream runs across both reloads
                running = stub.StreamGenerate(request("m"), metadata=bearer(OLD_TOKEN), timeout=60)
                await upstream.wait_for_requests(1)

                # The overlap: old and new tokens both work.
                write_atomically(path, config_text(upstream, [OLD_TOKEN, NEW_TOKEN]))
                gateway.send_signal(signal.SIGHUP)
                await gateway.wait_for_line(re.escape("config reloaded: 2 client token(s)"))
                during = [await refused_code(stub, OLD_TOKEN), await refused_code(stub, NEW_TOKEN)]

                # The rotation ends: only the new token works; the stream begun with the old one runs on.
                write_atomically(path, config_text(upstream, [NEW_TOKEN]))
                gateway.send_signal(signal.SIGHUP)
                await gateway.wait_for_line(re.escape("config reloaded: 1 client token(s)"))
                upstream.release()
                chunks = [chunk async for chunk in running]
                after = [await refused_code(stub, OLD_TOKEN), await refused_code(stub, NEW_TOKEN)]

    assert during == [grpc.StatusCode.OK, grpc.StatusCode.OK]
    assert after == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK]
    assert await running.code() == grpc.StatusCode.OK
    assert [c.is_complete for c in chunks][-1:] == [True]  # the whole reply, then the one final chunk
    assert "".join(c.delta for c in chunks) == "t0 t1 t2"
    assert "Traceback" not in gateway.stderr


async def test_a_weight_change_in_the_file_takes_effect_for_the_next_call(tmp_path: Path) -> None:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        path = tmp_path / "gateway.yaml"
        path.write_text(config_text(upstream, [NEW_TOKEN], weights=(95, 5)))
        async with run_gateway("--config", str(path), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
            address = await gateway.wait_ready()
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.AIServiceStub(channel)
                # The seeds' emergency rollback: everything to the other deployment, by editing the file alone.
                write_atomically(path, config_text(upstream, [NEW_TOKEN], weights=(0, 100)))
                await gateway.wait_for_line(re.escape("config reloaded"))
                served = [
                    (await stub.Generate(unary_request("m"), metadata=bearer(NEW_TOKEN), timeout=30)).deployment
                    for _ in range(10)
                ]
                streamed = await collect_stream(stub, request("m"), metadata=bearer(NEW_TOKEN), timeout=30)

    assert served == ["canary"] * 10
    assert streamed.finals[0].deployment == "canary"
    assert [r.body["model"] for r in upstream.requests] == ["tokens-4"] * 11


async def test_a_config_with_problems_is_refused_whole_and_the_running_one_kept(tmp_path: Path) -> None:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        path = tmp_path / "gateway.yaml"
        path.write_text(config_text(upstream, [OLD_TOKEN]))
        async with run_gateway("--config", str(path), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
            address = await gateway.wait_ready()
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.AIServiceStub(channel)
                # New tokens, but also two problems: all of it is refused, so the old token still works.
                broken = config_text(upstream, [NEW_TOKEN]).replace("kind: openai", "kind: telepathy")
                write_atomically(path, broken + "colour: blue\n")
                gateway.send_signal(signal.SIGHUP)
                await gateway.wait_for_line(re.escape("config reload refused"))
                old = await refused_code(stub, OLD_TOKEN)
                new = await refused_code(stub, NEW_TOKEN)
                with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
                    await stub.ListModels(pb.ListModelsRequest(), metadata=bearer(NEW_TOKEN), timeout=30)

    assert (old, new) == (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED)
    assert error_info(unauthenticated.value).reason == "UNAUTHENTICATED"
    assert "colour: unknown key" in gateway.stderr
    assert "providers[0].kind: expected one of" in gateway.stderr
    assert "config reloaded" not in gateway.stderr


async def test_what_is_bound_at_start_is_kept_and_said_to_need_a_restart(tmp_path: Path) -> None:
    async with FakeOpenAIUpstream(api_key=UPSTREAM_KEY) as upstream:
        path = tmp_path / "gateway.yaml"
        path.write_text(config_text(upstream, [OLD_TOKEN]))
        async with run_gateway("--config", str(path), env={"FAKE_KEY": UPSTREAM_KEY}) as gateway:
            address = await gateway.wait_ready()
            write_atomically(path, config_text(upstream, [OLD_TOKEN]).replace("127.0.0.1:0", "127.0.0.1:1"))
            gateway.send_signal(signal.SIGHUP)
            await gateway.wait_for_line(re.escape("config reloaded"))
            async with grpc.aio.insecure_channel(address) as channel:
                reply = await pb_grpc.AIServiceStub(channel).Generate(
                    unary_request("m"), metadata=bearer(OLD_TOKEN), timeout=30
                )

    assert reply.content
    assert "config reload: listen changed; it takes effect at the next restart" in gateway.stderr


async def test_a_rotated_key_file_is_used_after_a_sighup(tmp_path: Path) -> None:
    old_key, new_key = "sk-rotation-old-0123456789", "sk-rotation-new-0123456789"
    async with FakeOpenAIUpstream(api_key=(old_key, new_key)) as upstream:
        key_file = tmp_path / "openai-key"
        key_file.write_text(old_key + "\n")
        path = tmp_path / "gateway.yaml"
        path.write_text(config_text(upstream, [NEW_TOKEN]).replace("api_key_env: FAKE_KEY", "api_key_file: openai-key"))
        async with run_gateway("--config", str(path)) as gateway:
            address = await gateway.wait_ready()
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.AIServiceStub(channel)
                await stub.Generate(unary_request("m"), metadata=bearer(NEW_TOKEN), timeout=30)
                write_atomically(key_file, new_key + "\n")  # as a mounted Kubernetes Secret is updated
                gateway.send_signal(signal.SIGHUP)
                await gateway.wait_for_line(re.escape("config reloaded"))
                await stub.Generate(unary_request("m"), metadata=bearer(NEW_TOKEN), timeout=30)

    assert [r.headers["authorization"] for r in upstream.requests] == [f"Bearer {old_key}", f"Bearer {new_key}"]
    assert old_key not in gateway.stderr
    assert new_key not in gateway.stderr


def clients_config(models: str) -> str:
    return (
        "listen: 127.0.0.1:0\n"
        "providers: [{name: demo, kind: demo}]\n"
        "models: [{name: a, provider: demo}, {name: b, provider: demo}]\n"
        "clients:\n"
        "  - name: team\n"
        f"    tokens: [{{sha256: {hashlib.sha256(NEW_TOKEN.encode()).hexdigest()}}}]\n"
        f"    models: {models}\n"
    )


async def test_a_clients_models_change_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(clients_config("[a]"))
    async with run_gateway("--config", str(path)) as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Generate(unary_request("b"), metadata=bearer(NEW_TOKEN), timeout=30)
            write_atomically(path, clients_config("[a, b]"))
            gateway.send_signal(signal.SIGHUP)
            await gateway.wait_for_line(re.escape("config reloaded"))
            allowed = await stub.Generate(unary_request("b"), metadata=bearer(NEW_TOKEN), timeout=30)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused.value).reason == "MODEL_NOT_ALLOWED"
    assert allowed.content
