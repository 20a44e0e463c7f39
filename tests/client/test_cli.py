"""python -m client against real gateways: `main(argv)` in a worker thread, and once as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest

from client.__main__ import main, program_name, quiet_grpc
from client.version import version
from server.config import Deployment, ModelConfig, Price
from tests.certs import CertFiles
from tests.conftest import CLIENT_TOKEN, GatewayFactory, openai_config, repo_root
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process import run_gateway


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


@pytest.mark.parametrize("command", ["generate", "stream"])
async def test_image_files_go_with_the_prompt(
    demo_target: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dot.png").write_bytes(b"\x89PNG\r\n\x1a\n-not-really")
    argv = ["--target", demo_target, "--plaintext", "--image", str(tmp_path / "dot.png")]
    code = await run(command, "--model", "demo", "--prompt", "what is this", *argv)
    out, _ = capsys.readouterr()
    assert (code, out) == (0, "what is this [image/png image, 19 bytes]\n")


@pytest.mark.parametrize(("name", "message"), [("notes.txt", "not an image file name"), ("gone.png", "No such file")])
async def test_a_bad_image_file_is_a_usage_error(
    tmp_path: Path, name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    argv = ["generate", "--model", "demo", "--prompt", "hi", "--plaintext", "--image", str(tmp_path / name)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --image: ")
    assert message in err


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
        (
            ["stream", "--model", "demo", "--prompt", "hi", "--ca-cert", "/nonexistent/ca.pem"],
            "error: cannot read ca_file '/nonexistent/ca.pem': No such file or directory\n",
        ),
        (["chat", "--ca-cert", "/nonexistent/ca.pem"], "error: cannot read ca_file '/nonexistent/ca.pem'"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


async def test_a_missing_ca_cert_is_one_line_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "generate", "--model", "demo", "--prompt", "hi", "--ca-cert", str(missing),
        cwd=repo_root(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=10)
    assert (process.returncode, out) == (2, b"")
    assert err.decode() == f"error: cannot read ca_file '{missing}': No such file or directory\n"


def test_help_documents_tls_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--plaintext" in out
    assert "The default is TLS" in out


# --- models -----------------------------------------------------------------------------------------------


@pytest.fixture
async def catalog_target(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> str:
    """A catalog with aliases, prices, two weighted deployments and fallbacks."""
    config = openai_config(fake_openai.base_url)
    rich = ModelConfig(
        name="gpt-test",
        aliases=("fast", "cheap"),
        deployments=(Deployment("fake-openai", "gpt-test", 3.0, "main"), Deployment("demo", "demo", 1.0, "spare")),
        price=Price(0.4, 1.6),
        fallbacks=("demo",),
    )
    models = (rich, *(m for m in config.models if m.name in ("demo", "no-usage")))
    gateway = await make_gateway(replace(config, models=models))
    return f"127.0.0.1:{gateway.port}"


async def test_models_prints_an_aligned_table(catalog_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run("models", "--target", catalog_target, "--plaintext")
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "MODEL     ALIASES      PROVIDER     $/M IN  $/M OUT  MAX OUT  DEPLOYMENTS           FALLBACKS",
        "demo      -            demo         -       -        32000    demo/demo             -",
        "gpt-test  cheap, fast  fake-openai  0.4     1.6      32000    main:3, spare:1       demo",
        "no-usage  -            fake-openai  -       -        32000    fake-openai/no-usage  -",
    ]


ALL = ["json_object", "json_schema", "tools"]


async def test_models_json_is_the_typed_catalog(catalog_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run("models", "--json", "--target", catalog_target, "--plaintext")
    models = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [m["name"] for m in models] == ["demo", "gpt-test", "no-usage"]
    assert models[1] == {
        "name": "gpt-test",
        "aliases": ["cheap", "fast"],
        "provider": "fake-openai",
        "input_price_per_million": 0.4,
        "output_price_per_million": 1.6,
        "max_output_tokens": 32000,
        "deployments": [
            {
                "name": "main",
                "provider": "fake-openai",
                "upstream_model": "gpt-test",
                "weight": 3.0,
                "capabilities": ALL,
            },
            {"name": "spare", "provider": "demo", "upstream_model": "demo", "weight": 1.0, "capabilities": ALL},
        ],
        "fallbacks": ["demo"],
        "capabilities": ALL,
    }


async def test_models_needs_the_token_like_any_call(
    secure_target: str, tls_files: CertFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run("models", "--target", secure_target, "--ca-cert", str(tls_files.ca_cert))
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAUTHENTICATED UNAUTHENTICATED: ")


# --- --version and usage lines ----------------------------------------------------------------------------


async def cli(*argv: str, executable: tuple[str, ...] = ("-m", "client"), **env: str) -> tuple[int, str, str]:
    """Run the CLI as a child process; its exit code, stdout and stderr."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "GRPC_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, *executable, *argv, cwd=repo_root(), env={**environment, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_version_comes_from_the_package_metadata() -> None:
    assert await cli("--version") == (0, f"python -m client {metadata.version('holysheep-gateway')}\n", "")


def test_version_of_a_source_tree_that_was_never_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    pyproject = repo_root() / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert version(pyproject) == f"{declared} (source tree, not installed)"
    assert version(tmp_path / "pyproject.toml") == "unknown (not installed)"


async def test_usage_names_python_m_client_or_the_console_script(tmp_path: Path) -> None:
    # What pip writes for a console script, run from the source tree.
    script = tmp_path / "holysheep-client"
    script.write_text("import sys\nfrom client.__main__ import main\nsys.exit(main())\n")
    code, out, _ = await cli("stream", "--help")
    assert code == 0
    assert out.startswith("usage: python -m client stream ")
    code, out, _ = await cli("--help", executable=(str(script),), PYTHONPATH=str(repo_root()))
    assert code == 0
    assert out.startswith("usage: holysheep-client ")
    code, _, err = await cli("talk", executable=(str(script),), PYTHONPATH=str(repo_root()))
    assert code == 2
    assert "holysheep-client: error: argument COMMAND: invalid choice: 'talk'" in err


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [
        ("/repo/client/__main__.py", "python -m client"),
        ("/venv/bin/holysheep-client", "holysheep-client"),
        ("holysheep-client", "holysheep-client"),
        ("-c", "python -m client"),
    ],
)
def test_program_name(argv0: str, prog: str) -> None:
    assert program_name(argv0) == prog


# --- TLS and plaintext mixed up, and gRPC's own log lines ---------------------------------------------------


async def test_tls_to_a_plaintext_gateway_says_use_plaintext_without_grpc_log_lines(tmp_path: Path) -> None:
    async with run_gateway("--listen", "127.0.0.1:0") as gateway:  # what `make run` starts
        address = await gateway.wait_ready()
        for command in ("generate", "stream"):
            code, out, err = await cli(command, "--target", address, "--model", "demo", "--prompt", "hi")
            assert (code, out) == (1, "")
            assert err == (
                f"error: UNAVAILABLE SERVER_NOT_TLS: the server at {address} speaks plaintext, not TLS: "
                "use --plaintext (Python: plaintext=True)\n"
            )
        code, _, err = await cli("models", "--target", address, "--debug")
        lines = err.splitlines()
        assert code == 1
        assert any("ssl_transport_security" in line and "WRONG_VERSION_NUMBER" in line for line in lines), err
        assert f"error: UNAVAILABLE SERVER_NOT_TLS: the server at {address} speaks plaintext" in err
        assert "  grpc_message: failed to connect to all addresses" in err


async def test_plaintext_to_a_tls_gateway_says_it_probably_requires_tls(
    secure_target: str, tls_files: CertFiles
) -> None:
    code, out, err = await cli(
        "generate", "--plaintext", "--target", secure_target, "--model", "demo", "--prompt", "hi"
    )
    assert (code, out) == (1, "")
    assert err == (
        f"error: UNAVAILABLE PLAINTEXT_REFUSED: the server at {secure_target} closed the plaintext connection at once; "
        "it probably requires TLS: leave out --plaintext (Python: plaintext=False), and give --ca-cert "
        "(ca_file=) if a private CA signed its certificate\n"
    )
    code, _, err = await cli("models", "--target", secure_target, "--token", CLIENT_TOKEN)
    assert code == 1
    assert err == (
        f"error: UNAVAILABLE CERTIFICATE_UNTRUSTED: the server at {secure_target} has a certificate that no "
        "trusted CA signed: give its CA with --ca-cert (Python: ca_file=)\n"
    )


@pytest.mark.parametrize(
    ("env", "debug", "expected"),
    [
        ({}, False, {"GRPC_VERBOSITY": "NONE"}),
        ({}, True, {"GRPC_VERBOSITY": "INFO"}),
        ({"GRPC_VERBOSITY": "DEBUG"}, False, {"GRPC_VERBOSITY": "DEBUG"}),
        ({"GRPC_TRACE": "http"}, False, {"GRPC_TRACE": "http"}),
    ],
)
def test_grpc_verbosity_is_set_unless_the_user_chose(
    env: dict[str, str], debug: bool, expected: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "grpc")  # as in a fresh `python -m client`, before grpc is imported
    quiet_grpc(env, debug=debug)
    assert env == expected


def test_grpc_verbosity_is_left_alone_once_grpc_is_imported() -> None:
    env: dict[str, str] = {}
    quiet_grpc(env, debug=False)
    assert env == {}


async def test_python_m_client_does_not_import_grpc_before_it_sets_the_verbosity() -> None:
    probe = (
        "import sys, runpy\n"
        "import client, client.__main__\n"
        "assert 'grpc' not in sys.modules, 'grpc imported by the package'\n"
    )
    assert await cli(executable=("-c", probe)) == (0, "", "")
