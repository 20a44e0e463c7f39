"""The Dockerfile's structure (Docker itself is not installed here): a build stage and a clean final stage
that copies only the built environment, the runtime dependencies only, an unprivileged user, and a health
check whose command is run for real against a gateway process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.process import SAFETY_TIMEOUT_S, run_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for word, arguments in self.instructions if word == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def stages(text: str) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined, comments dropped)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        word, _, arguments = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            base, _, name = arguments.partition(" AS ")
            result.append(Stage(base.strip(), name.strip() or None))
        elif result:
            result[-1].instructions.append((word, arguments.strip()))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages(DOCKERFILE.read_text())


def env_of(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for arguments in stage.all("ENV"):
        for pair in shlex.split(arguments):
            name, _, value = pair.partition("=")
            values[name] = value
    return values


def health_command(stage: Stage) -> list[str]:
    options, _, command = stage.last("HEALTHCHECK").partition("CMD ")
    assert "--timeout" in options
    argv = json.loads(command)  # exec form: no shell in between
    assert isinstance(argv, list)
    return [str(word) for word in argv]


def test_a_build_stage_and_a_final_stage_that_takes_only_the_built_environment(dockerfile: list[Stage]) -> None:
    assert len(dockerfile) == 2
    build, final = dockerfile
    assert build.name == "build"
    assert build.base == final.base  # the venv's interpreter is the same in both
    assert final.all("COPY") == ["--from=build /opt/gateway /opt/gateway"]
    assert all("pip" not in run for run in final.all("RUN"))


def test_the_build_installs_the_runtime_dependencies_only(dockerfile: list[Stage]) -> None:
    installs = [run for run in dockerfile[0].all("RUN") if " install" in run]
    assert installs == ["/opt/gateway/bin/pip install ."]  # not editable, no [dev] or [otel] extra
    copied = [source for arguments in dockerfile[0].all("COPY") for source in arguments.split()[:-1]]
    for path in copied:
        assert (REPO_ROOT / path).exists(), path
    # Everything the package build reads is copied, and nothing else is in the context.
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {p.rstrip("*") for p in packages["include"]} | {"pyproject.toml", "README.md"} == set(copied)
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*"
    assert {line[1:].rstrip("/") for line in ignored if line.startswith("!")} == set(copied)


def test_the_final_stage_runs_unprivileged(dockerfile: list[Stage]) -> None:
    user = dockerfile[-1].last("USER").split(":")[0]
    assert user not in ("root", "0")
    assert int(user) >= 1000


def test_the_image_runs_the_gateway_on_all_interfaces(dockerfile: list[Stage]) -> None:
    final = dockerfile[-1]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(final.last("ENTRYPOINT")) == ["holysheep-gateway"]
    assert scripts["holysheep-gateway"] == "server.__main__:main"
    assert env_of(final)["GATEWAY_LISTEN"] == "0.0.0.0:50051"
    assert final.last("EXPOSE") == "50051"
    assert final.last("STOPSIGNAL") == "SIGTERM"


@pytest.mark.slow
async def test_the_health_check_command_passes_against_a_serving_gateway_and_fails_once_it_is_gone(
    dockerfile: list[Stage],
) -> None:
    final = dockerfile[-1]
    argv = health_command(final)
    assert argv[:2] == ["holysheep-client", "health"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["holysheep-client"] == "client.__main__:main"
    # What the console script runs, from this tree (the shared development venv's script may point elsewhere).
    command = [sys.executable, "-m", "client", *argv[1:]]

    async def check(target: str) -> tuple[int, str]:
        env = {**os.environ, **env_of(final), "GATEWAY_TARGET": target, "PATH": os.environ.get("PATH", "")}
        process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), SAFETY_TIMEOUT_S)
        assert process.returncode is not None
        return process.returncode, out.decode()

    async with run_gateway("--listen", "127.0.0.1:0") as gateway:
        address = await gateway.wait_ready()
        assert await check(address) == (0, "SERVING\n")
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0
    assert await check(address) == (1, "")
