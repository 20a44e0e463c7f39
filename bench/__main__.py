"""python -m bench [--quick] [--json [FILE]] [flags]: run the gateway benchmark and print one table.

    make bench                                  the default run (well under 90 s)
    make bench ARGS="--quick"                   a smoke check of the whole pipeline in about 10 s
    make bench ARGS="--json --rounds 3"         the raw numbers too, in bench/results/ (git ignores it)
    make bench ARGS="--json /tmp/bench.json"    ... or in a file of your choice

Progress goes to stderr, one line as each scenario starts and ends; the table goes to stdout.

Exit status: 0 when the bench ran, even if a target was missed (the table says MISSED); 1 when it could
not measure (a child failed); 130 after Ctrl-C, 143 after SIGTERM. No child process outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from pathlib import Path

from bench.procs import BenchError
from bench.report import default_json_path, render, write_json
from bench.results import QUICK, BenchResult, Settings
from bench.scenarios import run_bench

__all__ = ["main"]

# Flag name -> (Settings field, type, help). Defaults come from Settings (or QUICK with --quick).
_FLAGS: dict[str, tuple[str, type[int] | type[float], str]] = {
    "--ttft-requests": ("ttft_requests", int, "measured sequential TTFT requests per side"),
    "--ttft-warmup": ("ttft_warmup", int, "TTFT warm-up requests per side"),
    "--duration": ("duration_s", float, "throughput window per side and round, seconds"),
    "--warmup": ("warmup_s", float, "throughput warm-up before the window, seconds"),
    "--concurrency": ("concurrency", int, "concurrent streams per side, summed over the load processes"),
    "--processes": ("processes", int, "load-generator processes per side"),
    "--tokens": ("tokens", int, "tokens per stream in the throughput scenario"),
    "--rounds": ("rounds", int, "throughput rounds; the table shows medians"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the gateway against direct calls to a fake OpenAI upstream: time to first "
        "token at concurrency 1 and throughput under concurrent load, each in separate processes.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs for a smoke check (about 10 s)")
    parser.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=default_json_path(),
        metavar="FILE",
        help="also save every raw number to FILE (default: bench/results/bench-<UTC time>.json, ignored by git)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let every process use every CPU (default: the gateway gets CPU 0 alone, when there are 2+)",
    )
    parser.add_argument(
        "--metrics-control",
        action="store_true",
        help="run the 'metrics on' gateway with metrics off as well: its difference is then the noise floor",
    )
    for flag, (name, kind, text) in _FLAGS.items():
        default = getattr(Settings(), name)
        quick = getattr(QUICK, name)
        note = f"default {default:g}" + (f", {quick:g} with --quick" if quick != default else "")
        parser.add_argument(flag, dest=name, type=kind, metavar="S" if kind is float else "N", help=f"{text} ({note})")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    overrides = {name: getattr(args, name) for name, _, _ in _FLAGS.values() if getattr(args, name) is not None}
    overrides["pin"] = args.pin
    overrides["metrics_control"] = args.metrics_control
    settings = dataclasses.replace(base, **overrides)
    positive = [
        settings.ttft_requests,
        settings.duration_s,
        settings.concurrency,
        settings.processes,
        settings.tokens,
        settings.rounds,
    ]
    if min(positive) <= 0 or settings.ttft_warmup < 0 or settings.warmup_s < 0:
        raise ValueError("counts, durations and concurrency must be positive (warm-ups may be 0)")
    return settings


async def _run(settings: Settings, stopped_by: list[signal.Signals]) -> BenchResult:
    # SIGTERM stops the bench as Ctrl-C does: the task is cancelled and every child is stopped on the way out.
    task = asyncio.current_task()
    assert task is not None

    def on_sigterm() -> None:
        stopped_by.append(signal.SIGTERM)
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    return await run_bench(settings)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    stopped_by: list[signal.Signals] = []
    try:
        result = asyncio.run(_run(settings, stopped_by))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        sig = stopped_by[0] if stopped_by else signal.SIGINT
        print(f"bench: stopped by {sig.name}; every child process was stopped", file=sys.stderr)
        return 128 + sig
    print(render(result))
    if args.json:
        write_json(result, args.json)
        print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
