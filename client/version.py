"""The version of the installed distribution, for `--version`.

From the package metadata when the project is installed (`make install`, pip); from pyproject.toml when
the code runs from a source tree that was never installed; "unknown" otherwise.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

__all__ = ["DISTRIBUTION", "version"]

DISTRIBUTION = "holysheep-gateway"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def version(pyproject: Path = _PYPROJECT) -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        return "unknown (not installed)"
    if project.get("name") != DISTRIBUTION or "version" not in project:
        return "unknown (not installed)"
    return f"{project['version']} (source tree, not installed)"
