"""python -m server [--config FILE] [--listen HOST:PORT]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from server.app import serve
from server.config import ConfigError, load_config


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
    except ConfigError as exc:
        print(f"gateway: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
