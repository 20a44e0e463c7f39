"""python -m client against real gateways: `main(argv)` in a worker thread, and once as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from client.__main__ import main
from tests.certs import CertFiles
from tests.conftest import CLIENT_TOKEN, repo_root


async def run(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.mark.parametrize("command", ["generate", "stream"])
async def test_demo_prints_reply_and_summary(
    demo_target: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run(
        command, "--model", "demo", "--prompt", "hello brave world", "--target", demo_target, "--plaintext"
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "hello brave world\n"
    assert err == "[finish: stop; tokens: 3 prompt + 3 completion = 6; model: demo (demo)]\n"


async def test_sampling_options(demo_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", demo_target, "--plaintext", "--temperature", "0", "--top-p", "1", "--timeout", "5"]
    code = await run("stream", "--model", "demo", "--prompt", "a b c d", "--max-tokens", "3", "--stop", " c", *argv)
    out, err = capsys.readouterr()
    assert (code, out) == (0, "a b\n")
    assert err.startswith("[finish: stop;")


async def test_stream_subprocess_prints_tokens(demo_target: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "stream", "--model", "demo", "--prompt", "hello brave world",
        "--target", demo_target, "--plaintext",
        cwd=repo_root(), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)  # only against a hang
    assert process.returncode == 0, err.decode()
    assert out.decode() == "hello brave world\n"
    assert "finish: stop" in err.decode()


async def test_invalid_request_prints_every_violation(demo_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--prompt", "hi", "--temperature", "5", "--max-tokens", "0", "--target", demo_target, "--plaintext"]
    code = await run("generate", "--model", "demo", *argv)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0].startswith("error: INVALID_ARGUMENT INVALID_REQUEST: ")
    assert lines[1:] == [
        "  config.temperature: must be in [0, 2], got 5",
        "  config.max_tokens: must be in [1, 32000], got 0",
    ]


async def test_rate_limit_prints_retry_after(openai_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run("generate", "--model", "fault-429", "--prompt", "hi", "--target", openai_target, "--plaintext")
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("error: RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED: ")
    assert err.endswith("  retry after 7 s\n")


async def test_stream_failing_midway(openai_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--prompt", "alpha beta gamma", "--target", openai_target, "--plaintext"]
    code = await run("stream", "--model", "fault-reset-mid", *argv)
    out, err = capsys.readouterr()
    assert code == 1
    assert out == "alpha beta\n"
    assert err.startswith("error: UNAVAILABLE UPSTREAM_")


async def test_tls_with_token_from_environment(
    secure_target: str, tls_files: CertFiles, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_TOKEN", CLIENT_TOKEN)
    argv = ["--prompt", "secure hello", "--target", secure_target, "--ca-cert", str(tls_files.ca_cert)]
    code = await run("stream", "--model", "gpt-test", *argv)
    assert (code, capsys.readouterr().out) == (0, "secure hello\n")


async def test_wrong_token(secure_target: str, tls_files: CertFiles, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--prompt", "hi", "--target", secure_target, "--ca-cert", str(tls_files.ca_cert), "--token", "wrong"]
    code = await run("generate", "--model", "gpt-test", *argv)
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("error: UNAUTHENTICATED UNAUTHENTICATED: ")
    assert "wrong" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--prompt", "hi"], "--model"),
        (["chat", "--model", "demo", "--prompt", "hi"], "unrecognized arguments: --prompt"),
        (["talk", "--model", "demo"], "invalid choice"),
        (["stream", "--model", "demo", "--prompt", "hi", "--target", "10.0.0.1:50051", "--plaintext"], "loopback"),
        (["stream", "--model", "demo", "--prompt", "hi", "--ca-cert", "/nonexistent/ca.pem"], "ca.pem"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_documents_tls_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--plaintext" in out
    assert "The default is TLS" in out
