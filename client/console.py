"""What the CLI prints besides the replies: summaries, errors and notices, all on stderr."""

from __future__ import annotations

import sys

from client.errors import GatewayError
from client.types import GenerateResult, StreamEnd, TurnResult

__all__ = ["end_line", "print_error", "print_notice", "print_summary"]


def print_summary(end: GenerateResult | StreamEnd | TurnResult) -> None:
    usage = end.usage
    if usage.unreported:
        tokens = "not reported"
    elif usage.estimated:  # a cancelled turn or a resumed stream: the gateway counted the deltas it sent
        tokens = f"at least {usage.completion_tokens} completion (counted by the gateway)"
    else:
        tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens}"
    served = f"{end.model} ({end.provider})" if end.provider else end.model
    print(f"[finish: {end.finish_reason}; tokens: {tokens}; model: {served}]", file=sys.stderr)


def print_error(exc: GatewayError, *, debug: bool = False) -> None:
    """`error: CODE REASON: message`, then the field violations and the retry delay; with `debug`, the
    error's metadata too (for a connection failure, gRPC's own message)."""
    lines = [f"error: {exc}"]
    lines += [f"  {field}: {description}" for field, description in exc.field_violations]
    if exc.retry_after is not None:
        lines.append(f"  retry after {exc.retry_after:g} s")
    if debug:
        lines += [f"  {key}: {value}" for key, value in sorted(exc.metadata.items())]
    print("\n".join(lines), file=sys.stderr)


def print_notice(text: str) -> None:
    print(f"[{text}]", file=sys.stderr, flush=True)


def end_line(printed: bool) -> None:
    if printed:  # end the reply's line, so that the summary or an error starts on its own
        sys.stdout.write("\n")
        sys.stdout.flush()
