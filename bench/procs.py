"""The bench's child processes, and what /proc says about them.

`Children` starts every child and stops them all when it closes, whatever happened (a failure, Ctrl-C,
SIGTERM): SIGTERM first, SIGKILL after `STOP_TIMEOUT_S`. Each child gets a session of its own, so a Ctrl-C
in the terminal reaches only the bench, which then stops its children in order; on Linux each also gets a
parent-death signal, so that even a bench killed with SIGKILL leaves no orphans behind. A child may be kept
to a set of CPUs: its affinity is set before exec, so every thread it starts inherits it.

A child's stderr goes to a file in the run's work folder (a chatty child can never block on a full pipe);
`BenchError` messages carry its last lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = [
    "BenchError",
    "Child",
    "Children",
    "cpu_seconds",
    "group_cpu_seconds",
    "group_rss_bytes",
    "machine_cpu_seconds",
    "peak_rss_bytes",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 5.0
# Room for a load process's JSON line with many raw samples (asyncio's default line limit is 64 KiB).
_LINE_LIMIT = 64 * 2**20
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """The bench could not measure: a child failed to start, died, or a load process reported nonsense."""


def _find_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up here in the parent (between fork and exec the child only calls it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _find_prctl()


def _preexec(cpus: frozenset[int] | None) -> Callable[[], None]:
    """Runs in the child before exec: die with the bench (Linux), and keep to `cpus` when given."""

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)  # inherited by every thread the child starts

    return setup


class Child:
    """One running child process: `python -m <module> *args`."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.name = name
        self.process = process
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def failure(self, what: str) -> BenchError:
        """A BenchError about this child, with its exit code (if it exited) and the end of its stderr."""
        code = self.process.returncode
        status = "" if code is None else f" (exited with {code})"
        tail = self.stderr_tail()
        return BenchError(f"{self.name}: {what}{status}" + (f"\n--- {self.name} stderr ---\n{tail}" if tail else ""))

    async def read_line(self, timeout: float) -> str:
        """The next line the child prints on stdout; BenchError when it prints none in time or exits."""
        assert self.process.stdout is not None, f"{self.name} was started without a stdout pipe"
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise self.failure(f"no output within {timeout:.0f} s") from None
        except ValueError as exc:  # a line longer than the limit
            raise self.failure(f"unreadable output: {exc}") from exc
        if not line:
            await self.process.wait()
            raise self.failure("ended its output early")
        return line.decode().rstrip("\n")

    def write_line(self, text: str) -> None:
        assert self.process.stdin is not None, f"{self.name} was started without a stdin pipe"
        self.process.stdin.write(text.encode() + b"\n")

    async def wait(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise self.failure(f"still running after {timeout:.0f} s") from None

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if the child outlives STOP_TIMEOUT_S."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class Children:
    """Every child of one bench run; `async with` stops them all (newest first) on the way out."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._children: list[Child] = []

    async def __aenter__(self) -> Children:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_all()

    async def start(
        self,
        name: str,
        module: str,
        *args: str,
        stdin: bool = False,
        stdout: bool = True,
        cpus: frozenset[int] | None = None,
        env: dict[str, str] | None = None,
        program: str | None = None,
        cwd: Path = REPO_ROOT,
    ) -> Child:
        """Start `python -m module *args` from the repository root (or `cwd`: `-m` imports from there), with
        this interpreter, on `cpus` if given; or, with `program`, `program *args` (`module` is then ignored).
        `env` adds to the environment."""
        stderr_path = self._workdir / f"{name}.{len(self._children)}.stderr"
        # The gateway reads GATEWAY_*, OPENAI_* and OTEL_*: only the config the bench writes may steer it.
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "OTEL_"))}
        argv = [program, *args] if program else [sys.executable, "-m", module, *args]
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=environ | (env or {}),
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_preexec(cpus),
                limit=_LINE_LIMIT,
            )
        child = Child(name, process, stderr_path)
        self._children.append(child)
        return child

    async def stop(self, child: Child) -> None:
        await child.stop()
        self._children.remove(child)

    async def stop_all(self) -> None:
        interrupted = False
        while self._children:
            child = self._children.pop()
            if interrupted:
                child.kill()
                continue
            try:
                await asyncio.shield(child.stop())
            except asyncio.CancelledError:
                # Interrupted again while stopping (a second Ctrl-C): no more waiting, kill what is left.
                interrupted = True
                child.kill()
        if interrupted:
            raise asyncio.CancelledError


def _proc_fields(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, all its threads included (Linux /proc; NaN elsewhere)."""
    try:
        # Fields after the command name, which is in parentheses and may itself hold spaces.
        fields = _proc_fields(pid, "stat").rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time all CPUs have spent busy since boot (Linux /proc/stat; NaN elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]  # user … steal
    except (OSError, ValueError):
        return float("nan")
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of a live process (VmHWM), in bytes; 0 where /proc does not say."""
    try:
        status = _proc_fields(pid, "status")
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0


def _group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (a child of the bench leads its own: start_new_session)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in group `pgid` (a proxy with workers: all of them)."""
    members = _group_members(pgid)
    if not members:
        return float("nan")
    return sum(v for v in map(cpu_seconds, members) if v == v)  # a process gone meanwhile reads NaN


def group_rss_bytes(pgid: int) -> int:
    """The resident set size now (VmRSS) of every live process in group `pgid`, added up."""
    total = 0
    for pid in _group_members(pgid):
        try:
            status = _proc_fields(pid, "status")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total
