"""python -m bench [--quick] [--json [FILE]] [flags]: every side on the same fake upstream, one run, tables.

    make bench                                  the default run (about 6 minutes on 2 busy cores); saves
                                                bench/results/latest.{json,png}, profile-gateway.txt and
                                                the README's tables
    make bench ARGS="--quick"                   a smoke check of the whole pipeline in well under a minute
                                                (saves nothing unless --save)
    make bench ARGS="--rounds 4 --duration 10 --concurrency-high 512"   a bigger run
    make bench ARGS="--json /tmp/bench.json"    the raw numbers in a file of your choice too

Progress goes to stderr, one line as each scenario starts and ends; the tables go to stdout.

Exit status: 0 when the bench ran, even if a target was missed (its line says FAIL); 1 when it could not
measure (a child failed); 130 after Ctrl-C, 143 after SIGTERM. No child process outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

# The bench serves an OTLP sink with grpc.aio while it forks its children, which exec at once: gRPC's fork
# handlers are not needed, and would log a line per child that they were skipped.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from bench import chart, readme
from bench.procs import BenchError
from bench.report import RESULTS_DIR, document, render, write_json
from bench.results import QUICK, SCENARIOS, TARGETS, BenchResult, Settings, result_from_json
from bench.scenarios import run_bench

__all__ = ["main", "save"]

# Flag name -> (Settings field, type, help). Defaults come from Settings (or QUICK with --quick).
_FLAGS: dict[str, tuple[str, type[int] | type[float], str]] = {
    "--ttft-requests": ("ttft_requests", int, "measured sequential TTFT requests per side"),
    "--ttft-warmup": ("ttft_warmup", int, "TTFT warm-up requests per side"),
    "--duration": ("duration_s", float, "throughput window per side and round, seconds"),
    "--warmup": ("warmup_s", float, "throughput warm-up before the window, seconds"),
    "--concurrency": ("concurrency", int, "concurrent streams per side, summed over the load processes"),
    "--concurrency-high": ("concurrency_high", int, "the second latency level, one round per proxy"),
    "--processes": ("processes", int, "load-generator processes per side"),
    "--tokens": ("tokens", int, "tokens per stream in the throughput scenario"),
    "--rounds": ("rounds", int, "throughput rounds; the tables show medians"),
    "--wire-streams": ("wire_streams", int, "streams counted on the wire per side"),
    "--paced-requests": ("paced_requests", int, "Generate and StreamGenerate calls of the paced reply"),
    "--profile": ("profile_s", float, "seconds of py-spy on the gateway under load (0: none)"),
    "--workers": ("workers", int, "N of the N-worker gateway (0: the number of CPUs)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the gateway side by side with a direct client, the bare grpc.aio floor, "
        "N workers and the LiteLLM proxy, on one fake OpenAI upstream, each in separate processes.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny numbers, for a smoke check")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also save every raw number to FILE")
    parser.add_argument(
        "--save",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write bench/results/latest.{json,png}, the profile and the README tables "
        "(default: yes, but not with --quick)",
    )
    parser.add_argument("--no-litellm", dest="litellm", action="store_false", help="leave LiteLLM out")
    parser.add_argument(
        "--only",
        type=_names,
        metavar="KIND,KIND",
        help=f"run only these steps, of: {', '.join(SCENARIOS)} (saves nothing unless --save)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="run nothing: the tables (and, with --save, the saved files) from a saved run's raw numbers",
    )
    parser.add_argument(
        "--hold-streams",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        metavar="N,N",
        help=f"concurrent streams whose RSS is read (default {','.join(map(str, Settings().hold_streams))})",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the gateway of the checkout in DIR (e.g. `git worktree add /tmp/base main`) as a variant "
        "in paired rounds beside the gateway, to measure a change against what it changes",
    )
    parser.add_argument(
        "--sides",
        type=_names,
        metavar="SIDE,SIDE",
        help=f"start and run only these sides, of: {', '.join(TARGETS)} (the plain gateway always runs)",
    )
    parser.add_argument(
        "--metrics-control",
        action="store_true",
        help="the control run: the gateway_metrics side runs with metrics off too, so its change against the "
        "plain gateway is the bench's own noise",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let every process use every CPU (default: each proxy gets CPU 0 alone, when there are 2+)",
    )
    for flag, (name, kind, text) in _FLAGS.items():
        default = getattr(Settings(), name)
        quick = getattr(QUICK, name)
        note = f"default {default:g}" + (f", {quick:g} with --quick" if quick != default else "")
        parser.add_argument(flag, dest=name, type=kind, metavar="S" if kind is float else "N", help=f"{text} ({note})")
    return parser


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def _known(flag: str, names: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
    """`names` when each is one of `choices`; ValueError naming the others."""
    if unknown := set(names) - set(choices):
        raise ValueError(f"{flag}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(choices)}")
    return names


def settings_from(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    overrides = {name: getattr(args, name) for name, _, _ in _FLAGS.values() if getattr(args, name) is not None}
    overrides["pin"] = args.pin
    overrides["litellm"] = args.litellm
    if args.baseline:
        if not (args.baseline / "server" / "__main__.py").is_file():
            raise ValueError(f"--baseline: {args.baseline} is not a checkout of the gateway (no server/__main__.py)")
        overrides["baseline"] = str(args.baseline.resolve())
    if args.hold_streams:
        overrides["hold_streams"] = args.hold_streams
    if args.sides:
        overrides["sides"] = _known("--sides", args.sides, TARGETS)
    overrides["metrics_control"] = args.metrics_control
    if args.only:
        overrides["only"] = _known("--only", args.only, SCENARIOS)
    settings = dataclasses.replace(base, **overrides)
    positive = [
        settings.ttft_requests,
        settings.duration_s,
        settings.concurrency,
        settings.concurrency_high,
        settings.processes,
        settings.tokens,
        settings.rounds,
        settings.wire_streams,
        settings.paced_requests,
        *settings.hold_streams,
    ]
    if min(positive) <= 0 or settings.ttft_warmup < 0 or settings.warmup_s < 0 or settings.profile_s < 0:
        raise ValueError("counts, durations and concurrency must be positive (warm-ups and --profile may be 0)")
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


def save(result: BenchResult, folder: Path = RESULTS_DIR) -> list[str]:
    """The run as bench/results/latest.json and latest.png, the gateway's profile as text, and the README's
    tables made from that JSON; what was written, one line each."""
    doc = document(result)
    folder.mkdir(parents=True, exist_ok=True)
    latest = folder / "latest.json"
    latest.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    written = [f"saved: {latest}", chart.draw(doc, folder / "latest.png")]
    if result.profile_top:
        profile = folder / "profile-gateway.txt"
        profile.write_text("\n".join(["py-spy on the gateway under the bench's load", *result.profile_top]) + "\n")
        written.append(f"profile: {profile}")
    if folder == RESULTS_DIR:
        readme.README.write_text(readme.update(readme.README.read_text(), doc))
        written.append("README.md: the bench tables were regenerated from latest.json")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    stopped_by: list[signal.Signals] = []
    try:
        if args.from_json:
            result = result_from_json(json.loads(args.from_json.read_text()))
        else:
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
    if args.save if args.save is not None else not (args.quick or args.only):
        for line in save(result):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
