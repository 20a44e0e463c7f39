"""Clients through a real `python -m server` process: two clients with their own models and limits, by token
(one of them mid-rotation) and by mTLS client certificate, and `hash-token`.

The process runs on the wall clock: a limit of 2 requests a minute is not refilled while a test runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2_grpc as pb_grpc
from tests.certs import ClientCert, make_certs, make_client_certs
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import REPO_ROOT, GatewayProcess, run_gateway
from tests.rpc import detail, error_info, rich_status, unary_request

ALPHA = "alpha-token-0123456789"
ALPHA_OLD = "alpha-token-retired-0123456789"
BETA = "beta-token-0123456789"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_config(folder: Path, upstream: FakeOpenAIUpstream, tls: str = "") -> Path:
    """alpha: gpt-test, 2 requests a minute, two tokens and a certificate name; beta: demo only, one call at
    a time, a token from the environment and a SPIFFE id."""
    path = folder / "gateway.yaml"
    path.write_text(
        f"""
listen: 127.0.0.1:0
{tls}
providers:
  - {{name: fake, kind: openai, base_url: '{upstream.base_url}', api_key_env: FAKE_KEY}}
  - {{name: demo, kind: demo}}
models:
  - {{name: gpt-test, provider: fake}}
  - {{name: demo, provider: demo}}
clients:
  - name: alpha
    tokens: [{{sha256: {sha(ALPHA)}}}, {{sha256: {sha(ALPHA_OLD)}}}]
    {"certificates: [alpha.internal]" if tls else ""}
    models: [gpt-test]
    limits: {{requests_per_minute: 2}}
  - name: beta
    tokens: [{{env: BETA_TOKEN}}]
    {'certificates: ["spiffe://corp/beta"]' if tls else ""}
    models: [demo]
    limits: {{concurrent_streams: 1}}
client_defaults:
  models: []
"""
    )
    return path


ENV = {"FAKE_KEY": UPSTREAM_KEY, "BETA_TOKEN": BETA}


@pytest.fixture
async def plain(tmp_path: Path, fake_openai: FakeOpenAIUpstream) -> AsyncIterator[tuple[GatewayProcess, str]]:
    async with run_gateway("--config", str(write_config(tmp_path, fake_openai)), env=ENV) as gateway:
        yield gateway, await gateway.wait_ready()


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_two_clients_by_token_get_their_models_limits_and_trailers(
    plain: tuple[GatewayProcess, str], fake_openai: FakeOpenAIUpstream
) -> None:
    gateway, address = plain
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AIServiceStub(channel)
        call = stub.Generate(unary_request("gpt-test"), metadata=(*auth(ALPHA), ("x-end-user-id", "u-1")), timeout=30)
        await call
        trailers = dict(await call.trailing_metadata() or ())
        await stub.Generate(unary_request("gpt-test"), metadata=auth(ALPHA_OLD), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as over:
            await stub.Generate(unary_request("gpt-test"), metadata=auth(ALPHA), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as not_allowed:
            await stub.Generate(unary_request("gpt-test"), metadata=auth(BETA), timeout=30)
        beta = await stub.Generate(unary_request("demo"), metadata=auth(BETA), timeout=30)

    assert (trailers["x-ratelimit-limit-requests"], trailers["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert trailers["x-ratelimit-reset-requests"] == "30s"
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(over.value).reason == "QUOTA_EXCEEDED"
    failure = detail(rich_status(over.value), error_details_pb2.QuotaFailure)
    assert failure is not None
    assert [(v.subject, v.quota_id) for v in failure.violations] == [("client:alpha", "requests_per_minute")]
    retry = detail(rich_status(over.value), error_details_pb2.RetryInfo)
    assert retry is not None
    assert 0 < retry.retry_delay.ToMilliseconds() <= 30_000  # the wall clock ran on a little since the calls
    assert not_allowed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dict(error_info(not_allowed.value).metadata)["model"] == "gpt-test"
    assert beta.content == "hello brave world"
    assert [r.body["user"] for r in fake_openai.requests] == ["alpha:u-1", "alpha"]
    gateway.send_signal(signal.SIGTERM)
    assert await gateway.wait_exit() == 0
    assert "Generate client=alpha end_user=u-1 model=gpt-test" in gateway.stderr
    assert "code=RESOURCE_EXHAUSTED reason=QUOTA_EXCEEDED limit=requests_per_minute" in gateway.stderr
    assert "client(s)" in gateway.stderr  # the start-up line counts clients
    for token in (ALPHA, ALPHA_OLD, BETA):
        assert token not in gateway.stderr


@pytest.fixture
def mtls(tmp_path: Path, fake_openai: FakeOpenAIUpstream) -> tuple[Path, bytes, dict[str, ClientCert]]:
    server = make_certs(tmp_path)
    certs = make_client_certs(
        tmp_path / "clients-ca.crt",
        {"alpha.internal": (), "beta-workload": ("spiffe://corp/beta",), "stranger.internal": ()},
    )
    tls = f"tls: {{cert_file: {server.server_cert}, key_file: {server.server_key}, client_ca_file: clients-ca.crt}}"
    return write_config(tmp_path, fake_openai, tls), server.ca_cert.read_bytes(), certs


def channel_as(address: str, ca: bytes, cert: ClientCert | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        ca, private_key=cert.key if cert else None, certificate_chain=cert.cert if cert else None
    )
    return grpc.aio.secure_channel(address, credentials)


async def test_a_client_certificate_names_its_client_and_a_token_still_decides(
    mtls: tuple[Path, bytes, dict[str, ClientCert]], fake_openai: FakeOpenAIUpstream
) -> None:
    config, ca, certs = mtls
    async with run_gateway("--config", str(config), env=ENV) as gateway:
        address = await gateway.wait_ready()
        async with channel_as(address, ca, certs["alpha.internal"]) as channel:
            stub = pb_grpc.AIServiceStub(channel)
            served = await stub.Generate(unary_request("gpt-test"), timeout=30)  # by its CN, no token
            with pytest.raises(grpc.aio.AioRpcError) as alpha_demo:
                await stub.Generate(unary_request("demo"), timeout=30)
            as_beta = await stub.Generate(unary_request("demo"), metadata=auth(BETA), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as wrong_token:
                await stub.Generate(unary_request("gpt-test"), metadata=auth("not-a-token-at-all"), timeout=30)
        async with channel_as(address, ca, certs["beta-workload"]) as channel:
            by_san = await pb_grpc.AIServiceStub(channel).Generate(unary_request("demo"), timeout=30)
        async with channel_as(address, ca, certs["stranger.internal"]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as stranger:
                await pb_grpc.AIServiceStub(channel).Generate(unary_request("demo"), timeout=30)
        async with channel_as(address, ca, None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as no_certificate:
                await pb_grpc.AIServiceStub(channel).Generate(unary_request("demo"), timeout=30)

    assert served.content == "hello brave world"
    assert alpha_demo.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert alpha_demo.value.details() == "client 'alpha' may not call model 'demo'"
    assert as_beta.content == "hello brave world"  # the token, not the certificate, named the client
    assert wrong_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert by_san.content == "hello brave world"  # the SPIFFE id in its SAN names beta
    assert stranger.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(stranger.value).reason == "UNAUTHENTICATED"
    assert no_certificate.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself fails
    assert [r.body["user"] for r in fake_openai.requests] == ["alpha"]


async def test_hash_token_prints_the_entry_that_accepts_the_token_on_stdin() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "hash-token",
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(f"{ALPHA}\n".encode())

    assert process.returncode == 0
    assert out.decode() == f"- sha256: {sha(ALPHA)}\n"
    assert ALPHA.encode() not in out + err

    empty = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "hash-token", cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await empty.communicate(b"\n")
    assert (empty.returncode, out) == (2, b"")
    assert b"no token on stdin" in err
