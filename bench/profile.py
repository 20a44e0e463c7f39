"""py-spy on a process under load, boiled down to the frames where its time goes.

`record(pid, seconds, out)` samples the process (and its threads) with `py-spy record --format raw` and
returns the top frames, as text lines: by own time (the innermost frame of each sample) and by total time
(every frame a sample passes through). py-spy comes with the `bench` extra; without it, or where the
kernel refuses ptrace, the profile is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path

__all__ = ["ProfileUnavailable", "record", "top_frames"]

_RATE_HZ = 200
TOP = 20


class ProfileUnavailable(RuntimeError):
    """py-spy is not installed or could not attach."""


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ProfileUnavailable("py-spy is not installed (pip install -e '.[bench]')")
    return found


async def record(pid: int, seconds: float, raw: Path) -> list[str]:
    """Sample `pid` for `seconds` into `raw` (collapsed stacks); the top frames as text lines."""
    process = await asyncio.create_subprocess_exec(
        _py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(_RATE_HZ),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(raw),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0 or not raw.exists():
        raise ProfileUnavailable(f"py-spy failed: {stderr.decode(errors='replace').strip()[-300:]}")
    return top_frames(raw.read_text())


def top_frames(collapsed: str, top: int = TOP) -> list[str]:
    """The `top` frames by own and by total samples, from py-spy's raw output ("a;b;c 12" per line)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return ["no samples (the process was idle or py-spy saw no Python frames)"]
    lines = [f"{samples} samples at {_RATE_HZ} Hz", "", "own time (innermost frame):"]
    lines += [f"  {100 * n / samples:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total time (frames on the stack):"]
    lines += [f"  {100 * n / samples:5.1f} %  {frame}" for frame, n in total.most_common(top)]
    return lines
