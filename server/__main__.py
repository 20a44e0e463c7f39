"""python -m server [--config FILE] [--listen HOST:PORT]"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from server.app import serve
from server.config import ConfigError, load_config
from server.observe.logs import configure_logging
from server.observe.trace import tracing_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="The gRPC AI gateway. With no --config it serves the offline demo model on "
        "127.0.0.1:50051 (plus OpenAI models when OPENAI_API_KEY is set).",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (default: the embedded default)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (overrides config and GATEWAY_LISTEN)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, listen=args.listen)
        tracing = tracing_from_env()
    except (ConfigError, ValueError) as exc:
        print(f"gateway: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, "json" if config.log_format == "json" else "text")
    try:
        asyncio.run(serve(config, tracing))
    except OSError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
