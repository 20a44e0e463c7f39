"""python -m client generate|stream --model M --prompt P [options] | chat [--model M] [--system S] [options]

The reply goes to stdout (a stream prints each delta as it arrives); a one-line summary with the finish
reason and token counts goes to stderr. Exit codes: 0 success, 1 the call failed, 2 bad usage,
130 interrupted.

`chat` is a terminal conversation over InteractiveStream: each line read from stdin is a turn (the
gateway keeps the history), answered as it arrives. Ctrl-C during an answer cancels that turn and the
chat goes on; Ctrl-C at the prompt, or the end of input, ends the chat (exit 0). The prompt and the
summaries go to stderr, so stdout holds only the answers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from client import defaults
from client.errors import ConfigurationError, GatewayError
from client.sync_client import AIClient
from client.sync_interactive import Session
from client.types import GenerateResult, SamplingOptions, StreamEnd, TextDelta, TurnResult

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
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        try:
            return {"stream": _stream, "chat": _chat}.get(args.command, _generate)(client, args)
        except GatewayError as exc:
            _print_error(exc)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    connection = _connection_parser()
    common = argparse.ArgumentParser(add_help=False, parents=[connection])
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
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Call the AI gateway. Connections use TLS unless --plaintext is given.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("generate", parents=[common], help="print the whole reply at once")
    commands.add_parser("stream", parents=[common], help="print the reply as it is generated")
    chat = commands.add_parser(
        "chat",
        parents=[connection],
        help="a terminal chat over InteractiveStream (Ctrl-C stops an answer)",
        description="Chat in the terminal: each line is a turn; Ctrl-C during an answer cancels it, "
        "Ctrl-C at the prompt or Ctrl-D quits. Connections use TLS unless --plaintext is given.",
    )
    chat.add_argument("--model", default="demo", help="catalog model name (default: %(default)s)")
    chat.add_argument("--system", help="the system prompt of the conversation")
    chat.add_argument("--temperature", type=float, help="sampling temperature in [0, 2]")
    chat.add_argument("--max-tokens", type=int, help="the most tokens to generate per answer")
    chat.set_defaults(timeout=defaults.DEFAULT_TIMEOUT_S)  # the client's per-call default; a chat has none
    return parser


def _connection_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    conn = parent.add_argument_group("connection")
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
    return parent


def _generate(client: AIClient, args: argparse.Namespace) -> int:
    result = client.generate(args.prompt, model=args.model, system=args.system, sampling=_sampling(args))
    print(result.text)
    _print_summary(result)
    return EXIT_OK


def _stream(client: AIClient, args: argparse.Namespace) -> int:
    out = sys.stdout
    printed = False
    stream = client.stream_generate(args.prompt, model=args.model, system=args.system, sampling=_sampling(args))
    try:
        with stream:
            for event in stream:
                if isinstance(event, TextDelta):
                    out.write(event.text)
                    out.flush()
                    printed = True
    finally:
        _end_line(printed)
    if stream.result is not None:
        _print_summary(stream.result)
    return EXIT_OK


def _chat(client: AIClient, args: argparse.Namespace) -> int:
    session = client.interactive(model=args.model, system=args.system, sampling=_sampling(args))
    with session:
        print(
            f"[chat with {session.model} (session {session.session_id}); Ctrl-C stops an answer, "
            "Ctrl-D or Ctrl-C at the prompt quits]",
            file=sys.stderr,
        )
        while (line := _read_line()) is not None:
            if line.strip():
                _answer(session, line)
    return EXIT_OK


def _read_line() -> str | None:
    """The next line typed at the prompt; None at the end of input or on Ctrl-C."""
    sys.stderr.write("> ")
    sys.stderr.flush()
    try:
        return input()
    except (EOFError, KeyboardInterrupt):
        sys.stderr.write("\n")
        return None


def _answer(session: Session, line: str) -> None:
    """Print one turn's answer as it arrives; Ctrl-C cancels the turn. A turn's error ends only the turn."""
    out = sys.stdout
    turn = session.send(line)
    printed = False
    try:
        try:
            for event in turn:
                if isinstance(event, TextDelta):
                    printed = True  # first: a Ctrl-C right after the write must still end the line
                    out.write(event.text)
                    out.flush()
        except KeyboardInterrupt:
            turn.cancel()  # the turn ends with finish_reason cancelled; a second Ctrl-C quits the chat
        result = turn.result()
    except GatewayError as exc:
        _end_line(printed)
        _print_error(exc)
        return
    _end_line(printed)
    _print_summary(result)


def _sampling(args: argparse.Namespace) -> SamplingOptions:
    return SamplingOptions(
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        top_p=getattr(args, "top_p", None),  # chat has no --top-p and --stop
        stop=getattr(args, "stop", ()),
    )


def _end_line(printed: bool) -> None:
    if printed:  # end the reply's line, so that the summary or an error starts on its own
        sys.stdout.write("\n")
        sys.stdout.flush()


def _print_summary(end: GenerateResult | StreamEnd | TurnResult) -> None:
    usage = end.usage
    if usage.unreported:
        tokens = "not reported"
    elif usage.estimated:  # a cancelled turn or a resumed stream: the gateway counted the deltas it sent
        tokens = f"at least {usage.completion_tokens} completion (counted by the gateway)"
    else:
        tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens}"
    served = f"{end.model} ({end.provider})" if end.provider else end.model
    print(f"[finish: {end.finish_reason}; tokens: {tokens}; model: {served}]", file=sys.stderr)


def _print_error(exc: GatewayError) -> None:
    lines = [f"error: {exc}"]
    lines += [f"  {field}: {description}" for field, description in exc.field_violations]
    if exc.retry_after is not None:
        lines.append(f"  retry after {exc.retry_after:g} s")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
