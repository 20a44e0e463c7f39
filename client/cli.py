"""The commands of `python -m client` (parsed by client/__main__.py): generate, stream, count-tokens, embed,
models, chat and health.

Imported only once the CLI has set gRPC's log verbosity, because it imports grpc.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Final

from client import console
from client.channel import DEFAULT_RETRY
from client.chat import Chat, LineReader
from client.errors import ConfigurationError, GatewayError
from client.sync_client import AIClient
from client.types import ModelInfo, SamplingOptions, TextDelta
from generated import ai_service_pb2 as pb

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "models_table", "run"]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; the exit code."""
    try:
        args.schema = _schema(getattr(args, "json_schema", None))
    except (OSError, ValueError) as exc:
        print(f"error: --json-schema: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.images = [_image(path) for path in getattr(args, "image", None) or ()]
    except (OSError, ValueError) as exc:
        print(f"error: --image: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = AIClient(
            target=args.target,
            token=args.token,
            ca_file=args.ca_cert,
            plaintext=args.plaintext,
            timeout=args.timeout,
            retry=DEFAULT_RETRY,
            load_balancing=args.load_balancing,
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    commands: dict[str, Callable[[AIClient, argparse.Namespace], int | None]] = {
        "generate": _generate, "stream": _stream, "models": _models, "chat": _chat, "health": _health,
        "embed": _embed, "count-tokens": _count_tokens,
    }  # fmt: skip
    with client:
        try:
            code = commands[args.command](client, args)
        except GatewayError as exc:
            console.print_error(exc, debug=args.debug)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    return EXIT_OK if code is None else code


def _generate(client: AIClient, args: argparse.Namespace) -> None:
    prompt, messages = _turn(args)
    result = client.generate(prompt, model=args.model, messages=messages, system=args.system, sampling=_sampling(args))
    print(result.text)
    console.print_summary(result)


def _stream(client: AIClient, args: argparse.Namespace) -> None:
    out = sys.stdout
    printed = False
    prompt, messages = _turn(args)
    stream = client.stream_generate(
        prompt, model=args.model, messages=messages, system=args.system, sampling=_sampling(args)
    )
    try:
        with stream:
            for event in stream:
                if isinstance(event, TextDelta):
                    out.write(event.text)
                    out.flush()
                    printed = True
    finally:
        console.end_line(printed)
    if stream.result is not None:
        console.print_summary(stream.result)


def _embed(client: AIClient, args: argparse.Namespace) -> None:
    result = client.embed(args.text, model=args.model, dimensions=args.dimensions, task_type=args.task_type)
    for vector in result.vectors:
        print(json.dumps(list(vector)))
    usage = result.usage
    tokens = f"{usage.prompt_tokens} tokens" + (" (estimated)" if usage.estimated else "")
    cost = f", ${result.cost_usd:.6f}" if result.cost_usd is not None else ""
    size = len(result.vectors[0]) if result.vectors else 0
    print(
        f"[{result.model} via {result.provider}: {len(result.vectors)} vectors of {size}, {tokens}{cost}]",
        file=sys.stderr,
    )


def _count_tokens(client: AIClient, args: argparse.Namespace) -> None:
    prompt, messages = _turn(args)
    count = client.count_tokens(
        prompt, model=args.model, messages=messages, system=args.system, sampling=_sampling(args)
    )
    print(count.input_tokens)
    how = "estimated by the gateway" if count.estimated else f"counted by {count.provider}"
    print(f"[{count.model}: {how}]", file=sys.stderr)


def _models(client: AIClient, args: argparse.Namespace) -> None:
    models = client.list_models()
    if args.json:
        print(json.dumps([asdict(model) for model in models], indent=2))
    else:
        print(models_table(models))


def _chat(client: AIClient, args: argparse.Namespace) -> None:
    # Ctrl-C cancels an answer, and quits at the prompt, even when the chat was started with SIGINT ignored
    # (as a shell without job control starts a background command, and Python then leaves it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    chat = Chat(client, model=args.model, system=args.system, sampling=_sampling(args), retry=DEFAULT_RETRY)
    chat.run(LineReader())


def _health(client: AIClient, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


def _sampling(args: argparse.Namespace) -> SamplingOptions:
    return SamplingOptions(
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        top_p=getattr(args, "top_p", None),  # chat has no --top-p, --stop and --json-schema
        stop=getattr(args, "stop", ()),
        json_schema=getattr(args, "schema", None),
    )


def _image(path: str) -> pb.ContentPart:
    """An image file as a message part; its type from its name's extension."""
    mime_type = mimetypes.guess_type(path)[0] or ""
    if not mime_type.startswith("image/"):
        raise ValueError(f"{path}: not an image file name (.png, .jpg, .gif, .webp)")
    with open(path, "rb") as file:
        return pb.ContentPart(image=pb.Image(data=file.read(), mime_type=mime_type))


def _turn(args: argparse.Namespace) -> tuple[str | None, list[pb.Message] | None]:
    """The prompt, or with --image the user message that carries the prompt and the images."""
    if not args.images:
        return args.prompt, None
    return None, [pb.Message(role="user", content=args.prompt, parts=args.images)]


def _schema(path: str | None) -> dict[str, Any] | None:
    """The JSON Schema in the file at `path` (None: none asked for); ValueError when it is no JSON object."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        schema = json.load(file)
    if not isinstance(schema, dict):
        raise ValueError(f"{path} holds a JSON {type(schema).__name__}, not a schema object")
    return schema


_COLUMNS = ("MODEL", "ALIASES", "PROVIDER", "$/M IN", "$/M OUT", "MAX OUT", "DEPLOYMENTS", "FALLBACKS")


def models_table(models: list[ModelInfo]) -> str:
    """One aligned row per model; `-` for nothing, deployments as name:weight when there are several."""
    rows = [_COLUMNS, *(_row(model) for model in models)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _row(model: ModelInfo) -> tuple[str, ...]:
    if len(model.deployments) > 1:
        deployments = ", ".join(f"{d.name}:{d.weight:g}" for d in model.deployments)
    else:
        deployments = ", ".join(d.name for d in model.deployments)
    return (
        model.name,
        ", ".join(model.aliases) or "-",
        model.provider,
        _price(model.input_price_per_million),
        _price(model.output_price_per_million),
        str(model.max_output_tokens),
        deployments or "-",
        ", ".join(model.fallbacks) or "-",
    )


def _price(price: float | None) -> str:
    return "-" if price is None else f"{price:g}"
