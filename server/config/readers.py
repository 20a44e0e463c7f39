"""Small YAML readers that report problems instead of raising, so a config lists all of them at once."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["as_list", "mapping", "number", "unknown_keys"]


def mapping(raw: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
    return {}


def as_list(raw: Any, where: str, problems: list[str]) -> list[Any]:
    if isinstance(raw, list):
        return raw
    problems.append(f"{where}: expected a list, got {type(raw).__name__}")
    return []


def unknown_keys(entry: dict[str, Any], known: set[str], prefix: str, problems: list[str]) -> None:
    for key in sorted(set(entry) - known):
        problems.append(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")


def number(raw: Any, where: str, problems: list[str], *, minimum: float) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        problems.append(f"{where}: expected a number, got {raw!r}")
        return None
    if not math.isfinite(value):
        problems.append(f"{where}: expected a finite number, got {raw!r}")
        return None
    if value < minimum:
        problems.append(f"{where}: must be at least {minimum:g}")
        return None
    return value
