"""No secret leaves the gateway: every fault of the fake upstream, through a real `python -m server`, with
sentinel values for every client token, upstream key and signing secret, then a search of everything the
gateway said for them: each log line, status message, status detail, initial and trailing metadata, and the
whole /metrics scrape.

The upstream is told the real key and nothing else; a wrong token, a revoked key in a pool and a refused
signature are among the calls, so the paths that handle secrets when they fail are searched too.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from tests.conftest import ENDLESS, FAKE_MODELS
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.metrics import scrape_port
from tests.process import run_gateway
from tests.rpc import request, unary_request

pytestmark = pytest.mark.slow  # starts `python -m server`

# Distinct, greppable, and shaped like the real thing (the scrubber must not rely on a prefix).
SENTINELS = {
    "CLIENT_TOKEN": "sentinel-client-token-7f3a9c2e",
    "OTHER_CLIENT_TOKEN": "sentinel-other-token-51d8b0aa",
    "UPSTREAM_KEY": "sk-sentinel-upstream-key-c0ffee42",
    "REVOKED_KEY": "sk-sentinel-revoked-key-deadbeef",
    "SIGNING_SECRET": "sentinel-signing-secret-9e1f",
}
WRONG_TOKEN = "sentinel-wrong-token-0b5e77c1"
_METRICS_ON = re.compile(r"metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics")
# Faults whose timers would make this test slow, and that hold no secret-handling path of their own.
_SKIPPED = {ENDLESS, "fault-stall"}


def write_config(tmp_path: Path, upstream: FakeOpenAIUpstream) -> Path:
    models = "".join(
        f"  - {{name: {m}, provider: pooled, upstream_model: {m}}}\n" for m in FAKE_MODELS if m not in _SKIPPED
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "log: {level: DEBUG}\n"  # every line the gateway can write
        "metrics: {listen: '127.0.0.1:0'}\n"
        "retry: {max_attempts: 2, backoff_base_s: 0.001, backoff_cap_s: 0.002, retry_after_cap_s: 0.01}\n"
        "auth:\n"
        "  tokens:\n"
        "    - {name: team-a, env: CLIENT_TOKEN}\n"
        "    - {name: team-b, env: OTHER_CLIENT_TOKEN}\n"
        "providers:\n"
        f"  - {{name: pooled, kind: openai, base_url: '{upstream.base_url}', api_key_env: [REVOKED_KEY, UPSTREAM_KEY],"
        " signing_secret_env: SIGNING_SECRET}\n"
        f"  - {{name: badly-signed, kind: openai, base_url: '{upstream.base_url}', api_key_env: UPSTREAM_KEY,"
        " signing_secret_env: CLIENT_TOKEN}\n"
        "models:\n"
        f"{models}"
        "  - {name: badly-signed, provider: badly-signed, upstream_model: gpt-test}\n"
    )
    return path


def said(metadata: object) -> str:
    return repr(list(metadata or ()))  # type: ignore[call-overload]


async def test_no_token_key_or_secret_appears_in_anything_the_gateway_says(tmp_path: Path) -> None:
    heard: list[str] = []
    async with FakeOpenAIUpstream(
        api_key=SENTINELS["UPSTREAM_KEY"], signing_secret=SENTINELS["SIGNING_SECRET"]
    ) as upstream:
        config = write_config(tmp_path, upstream)
        async with run_gateway("--config", str(config), env=SENTINELS) as gateway:
            address = await gateway.wait_ready()
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.AIServiceStub(channel)
                calls = [m for m in FAKE_MODELS if m not in _SKIPPED] + ["badly-signed", "no-such-model"]
                for token in (SENTINELS["CLIENT_TOKEN"], WRONG_TOKEN):
                    auth = (("authorization", f"Bearer {token}"),)
                    for model in calls:
                        unary = stub.Generate(unary_request(model), metadata=auth, timeout=30)
                        try:
                            await unary
                        except grpc.aio.AioRpcError as error:
                            heard += [error.details() or "", said(error.trailing_metadata())]
                        heard += [said(await unary.initial_metadata()), said(await unary.trailing_metadata())]
                        stream = stub.StreamGenerate(request(model), metadata=auth, timeout=30)
                        try:
                            heard += [repr(chunk) async for chunk in stream]
                        except grpc.aio.AioRpcError as error:
                            heard += [error.details() or "", said(error.trailing_metadata())]
                        heard += [said(await stream.initial_metadata()), said(await stream.trailing_metadata())]
                    try:
                        heard.append(repr(await stub.ListModels(pb.ListModelsRequest(), metadata=auth, timeout=30)))
                    except grpc.aio.AioRpcError as error:
                        heard += [error.details() or "", said(error.trailing_metadata())]
            found = _METRICS_ON.search(gateway.stderr)
            assert found is not None, gateway.stderr
            heard.append((await scrape_port(int(found["port"]))).text)
        heard.append(gateway.stderr)

    everything = "\n".join(heard)
    # The calls did reach the paths that handle secrets: a refused token, a revoked key, a refused signature.
    assert "UNAUTHENTICATED" in everything
    assert "rejected the key in REVOKED_KEY" in everything
    assert "UPSTREAM_AUTH_FAILED" in everything
    for name, value in {**SENTINELS, "WRONG_TOKEN": WRONG_TOKEN}.items():
        assert value not in everything, f"{name} leaked"
