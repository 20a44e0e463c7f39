"""python -m server's own options: --version, and usage lines that name the command the user typed."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from server.__main__ import program_name, version
from tests.conftest import repo_root
from tests.process import child_env


async def gateway_cli(*argv: str, executable: tuple[str, ...] = ("-m", "server")) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *executable, *argv, cwd=repo_root(), env=child_env({"PYTHONPATH": str(repo_root())}),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_version_comes_from_the_package_metadata() -> None:
    assert await gateway_cli("--version") == (0, f"python -m server {metadata.version('holysheep-gateway')}\n", "")


async def test_usage_names_python_m_server_or_the_console_script(tmp_path: Path) -> None:
    script = tmp_path / "holysheep-gateway"  # what pip writes for the console script
    script.write_text("import sys\nfrom server.__main__ import main\nsys.exit(main())\n")
    code, out, _ = await gateway_cli("--help")
    assert (code, out.startswith("usage: python -m server ")) == (0, True)
    code, out, _ = await gateway_cli("--version", executable=(str(script),))
    assert (code, out) == (0, f"holysheep-gateway {metadata.version('holysheep-gateway')}\n")
    code, _, err = await gateway_cli("--bogus", executable=(str(script),))
    assert code == 2
    assert err.startswith("usage: holysheep-gateway ")
    assert "holysheep-gateway: error: unrecognized arguments: --bogus" in err


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [
        ("/repo/server/__main__.py", "python -m server"),
        ("/venv/bin/holysheep-gateway", "holysheep-gateway"),
        ("-c", "python -m server"),
    ],
)
def test_program_name(argv0: str, prog: str) -> None:
    assert program_name(argv0) == prog


def test_version_of_a_source_tree_that_was_never_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    pyproject = repo_root() / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert version(pyproject) == f"{declared} (source tree, not installed)"
    assert version(tmp_path / "pyproject.toml") == "unknown (not installed)"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\nversion = "9"\n')
    assert version(tmp_path / "pyproject.toml") == "unknown (not installed)"
