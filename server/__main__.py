"""python -m server [--config FILE] [--listen HOST:PORT] [--workers N|auto] [--loop auto|uvloop|asyncio]
python -m server --version
python -m server hash-token < token-file      # the `clients[].tokens` entry of the token on stdin

With --config, SIGHUP or a change of FILE reloads it (server/app.py: Gateway.reload).

Installed, the same command is the console script `holysheep-gateway`; the usage line names whichever
the user typed.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from server.app import WatchedFile, serve
from server.config import ConfigError, load_config
from server.config.clients import token_digest
from server.eventloop import LOOPS, LoopUnavailable, loop_runner
from server.observe.logs import configure_logging
from server.observe.trace import tracing_from_env
from server.workers import supervise

DISTRIBUTION = "holysheep-gateway"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-token"]:
        return hash_token(argv[1:])
    parser = argparse.ArgumentParser(
        prog=program_name(sys.argv[0]),
        description="The gRPC AI gateway. With no --config it serves the offline demo model on "
        "127.0.0.1:50051 (plus OpenAI models when OPENAI_API_KEY is set).",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (default: the embedded default)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (overrides config and GATEWAY_LISTEN)")
    parser.add_argument(
        "--workers",
        metavar="N|auto",
        help="worker processes sharing the port, supervised by this one; auto: one per core "
        "(overrides config and GATEWAY_WORKERS; default 1: a single process)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="the event loop: uvloop when installed (auto, the default), or asyncio's own",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    args = parser.parse_args(argv)
    watched = WatchedFile.now(args.config) if args.config is not None else None  # as it is before it is read
    try:
        loop, run = loop_runner(args.loop)
    except LoopUnavailable as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, listen=args.listen, workers=args.workers)
        tracing = tracing_from_env()
    except (ConfigError, ValueError) as exc:
        print(f"gateway: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, "json" if config.log_format == "json" else "text")
    # With a file: SIGHUP, or a change of the file, reloads it.
    reload = functools.partial(load_config, args.config, listen=args.listen) if args.config is not None else None
    if config.workers > 1:
        tracing.shutdown()  # each worker sets up its own
        return supervise(config, reload=reload, watch=watched)
    logging.getLogger("server").info("event loop: %s", loop)
    try:
        run(serve(config, tracing, reload=reload, watch=watched))
    except OSError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


def hash_token(argv: list[str]) -> int:
    """Read a token on stdin (its first line, surrounding whitespace dropped, as the gateway reads a
    bearer token) and print the config entry that accepts it: only its sha256 leaves."""
    parser = argparse.ArgumentParser(
        prog=f"{program_name(sys.argv[0])} hash-token",
        description="Read a client token on stdin; print the `clients[].tokens` entry to paste into the config.",
    )
    parser.parse_args(argv)
    token = sys.stdin.readline().strip()
    if not token:
        print('hash-token: no token on stdin (e.g. `printf %s "$TOKEN" | ... hash-token`)', file=sys.stderr)
        return 2
    print(f"- sha256: {token_digest(token)}")
    return 0


def program_name(argv0: str) -> str:
    """`python -m server`, or the console script's name (holysheep-gateway) when started as one."""
    name = Path(argv0).name
    return "python -m server" if name in ("__main__.py", "", "-c") else name


def version(pyproject: Path = _PYPROJECT) -> str:
    """The installed distribution's version; from pyproject.toml in a source tree never installed."""
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


if __name__ == "__main__":
    sys.exit(main())
