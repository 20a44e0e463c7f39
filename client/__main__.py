"""python -m client generate|stream|count-tokens --model M --prompt P | embed --model M --text T... | models [--json]
| chat [--model M] | health [options]

The reply goes to stdout (a stream prints each delta as it arrives); a one-line summary with the finish
reason and token counts goes to stderr. Exit codes: 0 success, 1 the call failed, 2 bad usage,
130 interrupted.

`embed` prints one vector per --text, in order, each a JSON array on its own line, and a summary (model,
vectors, tokens, cost) on stderr. `count-tokens` takes generate's options and prints the input tokens that
call would send; stderr says whether the provider counted them or the gateway estimated them.

`models` prints the gateway's catalog as a table (`--json`: as JSON). `chat` is a terminal conversation
over InteractiveStream (client/chat.py): each line read is a turn, answered as it arrives. Ctrl-C during an
answer cancels that turn and the chat goes on; Ctrl-C at the prompt, or the end of input, ends the chat
(exit 0). The prompt and the summaries go to stderr, so stdout holds only the answers. `health` prints the
gateway's grpc.health.v1 status and exits 0 only when it is SERVING (1 otherwise): a container's health check.

gRPC's C core writes its own log lines to stderr (a failed TLS handshake, ...); the CLI reports failures in
its own words instead, so it turns them off (GRPC_VERBOSITY=NONE) unless `--debug` is given or the
environment sets GRPC_VERBOSITY or GRPC_TRACE. gRPC reads them once, when it is imported: this module
parses the arguments first and imports grpc (through client.cli) only after.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path

from client import defaults
from client.version import version

__all__ = ["main", "program_name"]

EXIT_USAGE = 2
HEALTH_TIMEOUT_S = 5.0  # a health check that takes longer has failed


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser(program_name(sys.argv[0])).parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and --version (0) and on bad usage (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    quiet_grpc(os.environ, debug=args.debug)
    from client import cli  # imports grpc: only now

    return cli.run(args)


def program_name(argv0: str) -> str:
    """How the user started the CLI: `python -m client`, or the console script's name (holysheep-client)."""
    name = Path(argv0).name
    return "python -m client" if name in ("__main__.py", "", "-c") else name


def quiet_grpc(env: MutableMapping[str, str], *, debug: bool) -> None:
    """Set gRPC's log verbosity before grpc is imported: NONE, or INFO with `debug`; the user's own
    GRPC_VERBOSITY or GRPC_TRACE wins."""
    if "grpc" in sys.modules or "GRPC_VERBOSITY" in env or "GRPC_TRACE" in env:
        return  # too late to matter (gRPC has read it), or the user chose
    env["GRPC_VERBOSITY"] = "INFO" if debug else "NONE"


def _parser(prog: str) -> argparse.ArgumentParser:
    connection = _connection_parser()
    sampling = argparse.ArgumentParser(add_help=False)
    options = sampling.add_argument_group("sampling")
    options.add_argument("--temperature", type=float, help="sampling temperature in [0, 2]")
    options.add_argument("--max-tokens", type=int, help="the most tokens to generate (per answer)")
    call = argparse.ArgumentParser(add_help=False, parents=[connection, sampling])
    group = call.add_argument_group("call")
    group.add_argument("--model", required=True, help="catalog model name, e.g. demo")
    group.add_argument("--prompt", required=True, help="the user message")
    group.add_argument("--system", help="a system message sent before the prompt")
    group.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    group.add_argument("--stop", action="append", default=[], help="a stop sequence (repeatable, up to 4)")
    group.add_argument(
        "--json-schema", metavar="FILE", help="a JSON Schema file: the answer is JSON matching it ('title' names it)"
    )
    group.add_argument(
        "--image", metavar="FILE", action="append", default=[], help="an image sent with the prompt (repeatable)"
    )
    group.add_argument("--timeout", type=float, default=defaults.DEFAULT_TIMEOUT_S, help=_TIMEOUT_HELP)
    parser = argparse.ArgumentParser(
        prog=prog, description="Call the AI gateway. Connections use TLS unless --plaintext is given."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("generate", parents=[call], help="print the whole reply at once")
    commands.add_parser("stream", parents=[call], help="print the reply as it is generated")
    commands.add_parser(
        "count-tokens", parents=[call], help="print the input tokens a generate call with these options would send"
    )
    embed = commands.add_parser(
        "embed", parents=[connection], help="print one vector per text", description="Embed texts: one JSON "
        "array per --text on stdout, in order. The model needs the 'embeddings' capability.",
    )  # fmt: skip
    embed.add_argument("--model", required=True, help="catalog model name, e.g. demo or text-embedding-3-small")
    embed.add_argument("--text", action="append", required=True, help="a text to embed (repeatable)")
    embed.add_argument("--dimensions", type=int, help="the vectors' length, for models that can shorten them")
    embed.add_argument(
        "--task-type",
        choices=("retrieval_query", "retrieval_document", "semantic_similarity", "classification", "clustering"),
        help="what the vectors are for (Gemini)",
    )
    embed.add_argument("--timeout", type=float, default=defaults.DEFAULT_TIMEOUT_S, help=_TIMEOUT_HELP)
    models = commands.add_parser(
        "models", parents=[connection], help="list the gateway's models", description="List the gateway's catalog."
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--timeout", type=float, default=defaults.DEFAULT_TIMEOUT_S, help=_TIMEOUT_HELP)
    chat = commands.add_parser(
        "chat",
        parents=[connection, sampling],
        help="a terminal chat over InteractiveStream (Ctrl-C stops an answer)",
        description="Chat in the terminal: each line is a turn (arrow keys edit it and recall earlier "
        "ones); Ctrl-C during an answer cancels it, Ctrl-C at the prompt or Ctrl-D quits. When the gateway "
        "drains, the next line goes to a new session with the conversation so far. Connections use TLS "
        "unless --plaintext is given.",
    )
    chat.add_argument("--model", default="demo", help="catalog model name (default: %(default)s)")
    chat.add_argument("--system", help="the system prompt of the conversation")
    chat.set_defaults(timeout=defaults.DEFAULT_TIMEOUT_S)  # the client's per-call default; a chat has none
    health = commands.add_parser(
        "health",
        parents=[connection],
        help="print the gateway's health; exit 0 only when SERVING",
        description="Ask the gateway's grpc.health.v1 service (no token needed) and print its status: SERVING, "
        "or NOT_SERVING while it drains. Exit 0 only when SERVING, 1 otherwise: a container health check.",
    )
    health.add_argument("--service", default="", help="the service to ask about (default: the whole server)")
    health.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S, help=_TIMEOUT_HELP)
    return parser


_TIMEOUT_HELP = "deadline in seconds (default: %(default)s)"


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
    conn.add_argument(
        "--load-balancing",
        choices=defaults.LOAD_BALANCING_POLICIES,
        help="gRPC's policy over the addresses the target resolves to (default: pick_first); round_robin "
        "spreads calls over all of them, e.g. dns:///gateway-headless.NAMESPACE.svc.cluster.local:50051",
    )
    conn.add_argument(
        "--debug", action="store_true", help="let gRPC's own log lines through, and show the details of errors"
    )
    return parent


if __name__ == "__main__":
    sys.exit(main())
