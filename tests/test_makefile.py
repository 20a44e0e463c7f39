"""The Makefile's installs: `make run` installs the gateway alone, `make install` (and so `make test`) the
development tools too; each once, until pyproject.toml changes.

The recipes run for real, from the repository, with a stand-in for python3.11 that records its arguments
and makes a stand-in venv: no network, and the shared .venv is never touched.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Records "python ARGS" and, for `-m venv DIR`, makes DIR/bin/python a copy of itself.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> {log}
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
"""


class Make:
    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "python.log"
        self.log.touch()
        self.venv = tmp_path / "venv"
        self.python = tmp_path / "python3.11"
        self.python.write_text(FAKE_PYTHON.format(log=shlex.quote(str(self.log))))
        self.python.chmod(0o755)

    def __call__(self, target: str, *variables: str) -> list[str]:
        """Run `make target`; the python commands it ran, one per line."""
        before = len(self.log.read_text().splitlines())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
        subprocess.run(
            ["make", "--no-print-directory", target, f"VENV={self.venv}", f"PYTHON={self.python}", *variables],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self.log.read_text().splitlines()[before:]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    return Make(tmp_path)


def pip_installs(commands: list[str]) -> list[str]:
    return [c.split(" install ", 1)[1] for c in commands if c.startswith("-m pip install ")]


def test_make_run_on_a_fresh_clone_makes_the_venv_and_installs_only_the_runtime(make: Make) -> None:
    commands = make("run")
    assert commands[0] == f"-m venv {make.venv}"
    assert pip_installs(commands) == ["--quiet --upgrade pip", "--quiet -e ."]
    assert commands[-1] == "-m server"


def test_make_run_installs_once(make: Make) -> None:
    make("run")
    assert make("run") == ["-m server"]


def test_make_install_adds_the_development_tools_once_and_make_run_then_installs_nothing(make: Make) -> None:
    make("run")
    assert pip_installs(make("install")) == ["--quiet -e .[dev]"]
    assert make("install") == []
    assert make("run") == ["-m server"]


def test_a_dev_install_on_a_fresh_clone_serves_make_run_too(make: Make) -> None:
    assert pip_installs(make("install")) == ["--quiet --upgrade pip", "--quiet -e .[dev]"]
    assert make("run") == ["-m server"]


def test_an_install_older_than_pyproject_toml_runs_again(make: Make) -> None:
    make("install")
    os.utime(make.venv / ".installed-runtime", (0, 0))
    assert pip_installs(make("run")) == ["--quiet -e ."]
    os.utime(make.venv / ".installed-dev", (0, 0))
    assert pip_installs(make("install")) == ["--quiet -e .[dev]"]


FAKE_APT_GET = """#!/bin/sh
echo "$*" >> {log}
"""


def system_deps(tmp_path: Path, packages: str) -> list[str]:
    """Run `make system-deps` for `packages` with a stand-in apt-get; the apt-get commands it ran."""
    log = tmp_path / "apt.log"
    log.touch()
    apt_get = tmp_path / "apt-get"
    apt_get.write_text(FAKE_APT_GET.format(log=shlex.quote(str(log))))
    apt_get.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    subprocess.run(
        ["make", "--no-print-directory", "system-deps", f"SYSTEM_PACKAGES={packages}", f"APT_GET={apt_get}"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return log.read_text().splitlines()


def test_system_deps_installs_nothing_when_the_packages_are_there(tmp_path: Path) -> None:
    assert system_deps(tmp_path, "nginx libnginx-mod-stream redis-server") == []


def test_system_deps_installs_only_the_missing_packages(tmp_path: Path) -> None:
    commands = system_deps(tmp_path, "nginx no-such-package-for-the-test")
    assert commands[0] == "update -qq"
    assert commands[1].startswith("install -y -qq --no-install-recommends")
    assert commands[1].split()[-1] == "no-such-package-for-the-test"


def test_make_test_and_pytest_install_the_system_packages_first() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    rules = {line.split(":")[0]: line.split(":", 1)[1].split() for line in makefile.splitlines() if ": " in line}
    assert "system-deps" in rules["test"]
    assert "system-deps" in rules["pytest"]


def test_make_bench_peers_installs_litellm_into_a_venv_of_its_own_once(make: Make, tmp_path: Path) -> None:
    peers = tmp_path / "peers"
    commands = make("bench-peers", f"PEERS_VENV={peers}")
    assert commands[0] == f"-m venv {peers}"
    assert pip_installs(commands) == ["--quiet --upgrade pip", "--quiet litellm[proxy]"]
    assert not make.venv.exists()  # the gateway's own venv is not touched
    assert make("bench-peers", f"PEERS_VENV={peers}") == []


def test_make_bench_installs_the_bench_extra_before_it_runs(make: Make) -> None:
    commands = make("bench", "ARGS=--quick")
    assert pip_installs(commands)[-1] == "--quiet -e .[dev,bench]"
    assert commands[-2:] == ["-m bench --quick", "-m bench.fairness"]
