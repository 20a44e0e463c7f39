"""python -m client generate|stream --model M --prompt P [options]

The reply goes to stdout (a stream prints each delta as it arrives); a one-line summary with the finish
reason and token counts goes to stderr. Exit codes: 0 success, 1 the call failed, 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from client import defaults
from client.errors import GatewayError
from client.sync_client import AIClient
from client.types import GenerateResult, StreamEnd, TextDelta

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad usage (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        client = AIClient(
            target=args.target,
            token=args.token,
            ca_file=args.ca_cert,
            plaintext=args.plaintext,
            timeout=args.timeout,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        try:
            return _stream(client, args) if args.command == "stream" else _generate(client, args)
        except GatewayError as exc:
            _print_error(exc)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    call = common.add_argument_group("call")
    call.add_argument("--model", required=True, help="catalog model name, e.g. demo")
    call.add_argument("--prompt", required=True, help="the user message")
    call.add_argument("--system", help="a system message sent before the prompt")
    call.add_argument("--temperature", type=float, help="sampling temperature in [0, 2]")
    call.add_argument("--max-tokens", type=int, help="the most tokens to generate")
    call.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    call.add_argument("--stop", action="append", default=[], help="a stop sequence (repeatable, up to 4)")
    call.add_argument(
        "--timeout", type=float, default=defaults.DEFAULT_TIMEOUT_S, help="deadline in seconds (default: %(default)s)"
    )
    conn = common.add_argument_group("connection")
    conn.add_argument(
        "--target", help=f"HOST:PORT of the gateway (default: ${defaults.TARGET_ENV}, else {defaults.DEFAULT_TARGET})"
    )
    conn.add_argument("--token", help=f"bearer token (default: ${defaults.TOKEN_ENV})")
    conn.add_argument("--ca-cert", metavar="FILE", help="PEM file of a private CA (default: the system roots)")
    conn.add_argument(
        "--plaintext",
        action="store_true",
        help="connect without TLS; allowed for loopback targets only. The default is TLS.",
    )
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Call the AI gateway. Connections use TLS unless --plaintext is given.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("generate", parents=[common], help="print the whole reply at once")
    commands.add_parser("stream", parents=[common], help="print the reply as it is generated")
    return parser


def _generate(client: AIClient, args: argparse.Namespace) -> int:
    result = client.generate(
        args.prompt, model=args.model, system=args.system, temperature=args.temperature,
        max_tokens=args.max_tokens, top_p=args.top_p, stop=args.stop,
    )  # fmt: skip
    print(result.text)
    _print_summary(result)
    return EXIT_OK


def _stream(client: AIClient, args: argparse.Namespace) -> int:
    out = sys.stdout
    printed = False
    stream = client.stream_generate(
        args.prompt, model=args.model, system=args.system, temperature=args.temperature,
        max_tokens=args.max_tokens, top_p=args.top_p, stop=args.stop,
    )  # fmt: skip
    try:
        with stream:
            for event in stream:
                if isinstance(event, TextDelta):
                    out.write(event.text)
                    out.flush()
                    printed = True
    finally:
        if printed:  # end the reply's line, so that the summary or an error starts on its own
            out.write("\n")
            out.flush()
    if stream.result is not None:
        _print_summary(stream.result)
    return EXIT_OK


def _print_summary(end: GenerateResult | StreamEnd) -> None:
    usage = end.usage
    print(
        f"[finish: {end.finish_reason}; tokens: {usage.prompt_tokens} prompt + {usage.completion_tokens} "
        f"completion = {usage.total_tokens}; model: {end.model} ({end.provider})]",
        file=sys.stderr,
    )


def _print_error(exc: GatewayError) -> None:
    lines = [f"error: {exc}"]
    lines += [f"  {field}: {description}" for field, description in exc.field_violations]
    if exc.retry_after is not None:
        lines.append(f"  retry after {exc.retry_after:g} s")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
