"""Which process holds which TCP socket of a port, read from Linux's /proc: how a test of several worker
processes learns which worker accepted which connections, without asking the gateway.

    held = sockets_of(port, [pid_a, pid_b])
    held[pid_a].established    # connections to `port` that worker a accepted
    held[pid_b].listening      # whether worker b listens on `port`
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Held", "sockets_of"]

_ESTABLISHED = "01"
_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class Held:
    """The sockets of one port that one process holds."""

    established: int
    listening: bool


def sockets_of(port: int, pids: Iterable[int]) -> dict[int, Held]:
    """For each of `pids`, its established and listening TCP sockets whose local port is `port`."""
    states = _states_by_inode(port)
    held = {}
    for pid in pids:
        mine = [states[inode] for inode in _socket_inodes(pid) if inode in states]
        held[pid] = Held(established=mine.count(_ESTABLISHED), listening=_LISTEN in mine)
    return held


def _states_by_inode(port: int) -> dict[str, str]:
    """inode -> TCP state (hex, as the kernel writes it) of every IPv4 and IPv6 socket on local `port`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as file:
            next(file)  # the header
            for line in file:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if int(local.rpartition(":")[2], 16) == port:
                    found[inode] = state
    return found


def _socket_inodes(pid: int) -> list[str]:
    """The inodes of the sockets among `pid`'s open files (`socket:[12345]` links)."""
    inodes = []
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:  # it has exited
        return []
    for name in names:
        try:
            target = os.readlink(f"{directory}/{name}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.append(target[len("socket:[") : -1])
    return inodes
