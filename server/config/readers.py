"""Small YAML readers that report problems instead of raising, so a config lists all of them at once."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from server import defaults
from server.config.schema import ConfigError

__all__ = [
    "MAX_SECONDS",
    "MAX_WHOLE",
    "as_list",
    "available_cores",
    "mapping",
    "number",
    "numbers",
    "range_of",
    "read_yaml",
    "unknown_keys",
    "worker_count",
]

# The real range of the config's numbers. gRPC carries its limits and durations as 32-bit integers
# (durations in milliseconds): a larger value would pass a naive check and then crash the start-up, so
# every whole-number option stops at MAX_WHOLE and every duration (a key ending in `_s`) at MAX_SECONDS
# (24.8 days), which no limit of the gateway needs to pass.
MAX_WHOLE = 2**31 - 1
MAX_SECONDS = float(MAX_WHOLE // 1000)
# Options narrower than their kind: the gRPC receive limit is max_request_bytes plus the message overhead.
_MAXIMA = {"max_request_bytes": float(MAX_WHOLE - defaults.MAX_MESSAGE_OVERHEAD_BYTES)}


def read_yaml(path: Path, what: str = "config file") -> Any:
    """The YAML document in the file at `path`; a ConfigError naming the file, and the line and column of a
    syntax error (PyYAML itself names `<unicode string>` and quotes the line, which may hold a secret)."""
    try:
        return yaml.safe_load(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {_yaml_problem(exc)}") from exc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        problem = f"{_at(exc.problem_mark)}: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            return f"{problem} ({exc.context} at {_at(exc.context_mark)})"
        return f"{problem} ({exc.context})" if exc.context else problem
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.position}: {str(exc).splitlines()[0]}"
    return type(exc).__name__


def _at(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


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


def number(
    raw: Any, where: str, problems: list[str], *, minimum: float, maximum: float = math.inf, whole: bool = False
) -> float | None:
    """`raw` as a number in [minimum, maximum] (a whole one when `whole`), or None with the problem noted.
    YAML's `true` and `false` are not numbers, although Python would read them as 1 and 0."""
    if isinstance(raw, bool):
        problems.append(f"{where}: expected a number, got {str(raw).lower()}")
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        problems.append(f"{where}: expected a number, got {raw!r}")
        return None
    if not math.isfinite(value):
        problems.append(f"{where}: expected a finite number, got {raw!r}")
        return None
    if whole and not value.is_integer():
        problems.append(f"{where}: expected a whole number, got {raw!r}")
        return None
    if whole:
        minimum = math.ceil(minimum)  # a whole number above 0.001 is at least 1: say so
    if value < minimum:
        problems.append(f"{where}: must be at least {minimum:g}")
        return None
    if value > maximum:
        problems.append(f"{where}: must be at most {maximum:.0f}" + (" (24.8 days)" if maximum == MAX_SECONDS else ""))
        return None
    return value


def range_of(key: str, current: object) -> tuple[float, bool]:
    """The largest value of option `key` whose value now is `current`, and whether it must be whole."""
    if key in _MAXIMA:
        return _MAXIMA[key], True
    if key.endswith("_s"):
        return MAX_SECONDS, False
    if isinstance(current, int) and not isinstance(current, bool):
        return float(MAX_WHOLE), True
    return math.inf, False


def numbers(
    entry: dict[str, Any], keys: Iterable[str], prefix: str, template: object, problems: list[str], *, minimum: float
) -> dict[str, Any]:
    """The `keys` present in `entry` that are numbers of at least `minimum` and in their real range (see
    `range_of`), each converted to the type of the field of the same name in `template` (a dataclass
    instance), ready for `dataclasses.replace`."""
    values: dict[str, Any] = {}
    for key in keys:
        if key not in entry:
            continue
        current = getattr(template, key)
        maximum, whole = range_of(key, current)
        value = number(entry[key], f"{prefix}{key}", problems, minimum=minimum, maximum=maximum, whole=whole)
        if value is not None:
            values[key] = type(current)(value)
    return values


def worker_count(raw: Any, where: str, problems: list[str]) -> int | None:
    """`workers`: a whole number from 1 to MAX_WORKERS, or `auto` (the cores this process may run on)."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return available_cores()
    text = str(raw).strip() if isinstance(raw, int | str) and not isinstance(raw, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= defaults.MAX_WORKERS:
        problems.append(f"{where}: expected a whole number from 1 to {defaults.MAX_WORKERS}, or auto; got {raw!r}")
        return None
    return int(text)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which a container's cpuset narrows)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
