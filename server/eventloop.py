"""Which asyncio event loop the gateway runs on: uvloop when it is installed (`auto`, the default), or
asyncio's own.

    name, run = loop_runner("auto")     # ("uvloop", uvloop.run) or ("asyncio", asyncio.run)
    run(serve(config))

`make bench` measures both side by side (the "plain asyncio loop" row): uvloop cut the gateway's CPU per
streamed token there (README, Benchmark), so it is the default wherever it installs. grpc.aio runs on it
unchanged. An explicit `uvloop` that is not installed is refused (LoopUnavailable), never quietly replaced.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LOOPS", "LoopUnavailable", "loop_runner"]

LOOPS = ("auto", "uvloop", "asyncio")
T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


class LoopUnavailable(ValueError):
    """`uvloop` was asked for and is not installed."""


def loop_runner(choice: str) -> tuple[str, Runner[Any]]:
    """The loop `choice` (one of LOOPS) comes to, and the function that runs a coroutine on it."""
    if choice not in LOOPS:
        raise ValueError(f"unknown event loop {choice!r}; choose one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return "asyncio", asyncio.run
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise LoopUnavailable("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return "asyncio", asyncio.run
    run: Runner[Any] = uvloop.run
    return "uvloop", run
