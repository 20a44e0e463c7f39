"""Traces: a span per call and per upstream attempt, or nothing at all (the default).

    client ──traceparent──► call span (SERVER, "holysheepai.AIService/StreamGenerate")
                               ├─ event "retry" / "fallback"          (between attempts, with error.type)
                               ├─ attempt span (CLIENT, "chat gpt-4o") ──traceparent──► upstream HTTP request
                               └─ attempt span (CLIENT, "chat claude-…")
    InteractiveStream: the session's call span, and under it one INTERNAL span per turn, each with its
    attempts under it.

Tracing is on only when OTEL_TRACES_EXPORTER says `otlp` (or `console`); the other standard OTEL_*
variables configure it (observe/otel.py, which needs the `otel` extra). Off, every call gets `CallTrace`,
which records nothing and passes the caller's own `traceparent` on to the upstream unchanged, so the
upstream's spans still join the caller's trace.

Spans are written from the call record when the call ends (`CallTrace.end`) and from what an attempt
returned: nothing is done per token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TypeAlias

from server.errors import GatewayError
from server.observe.record import CallRecord
from server.types import Completion, Finish, Served

__all__ = ["TRACEPARENT", "AttemptTrace", "CallTrace", "Metadata", "Tracing", "tracing_from_env"]

Metadata: TypeAlias = Sequence[tuple[str, str | bytes]]
Headers: TypeAlias = tuple[tuple[str, str], ...]

TRACEPARENT = "traceparent"
# W3C Trace Context, version 00: trace id and parent id not all zeros (checked below).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
EXPORTERS = ("otlp", "console")


def valid_traceparent(value: str) -> bool:
    match = _TRACEPARENT.fullmatch(value)
    return match is not None and match[1] != "0" * 32 and match[2] != "0" * 16


class AttemptTrace:
    """One upstream attempt. `headers` go on its HTTP request. This one records nothing."""

    __slots__ = ("headers",)

    def __init__(self, headers: Headers = ()) -> None:
        self.headers = headers

    def answered(self, reply: Finish | Completion) -> None:
        """The attempt's reply is complete."""

    def failed(self, error: GatewayError) -> None:
        """The attempt failed with `error` (another attempt may follow)."""

    def end(self) -> None:
        """The attempt is over (answered, failed, or abandoned with the call)."""

    def __enter__(self) -> AttemptTrace:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, GatewayError):
            self.failed(exc)
        self.end()


class CallTrace:
    """One call or turn. This one records nothing and passes the caller's traceparent on."""

    __slots__ = ("_attempt",)

    def __init__(self, traceparent: str = "") -> None:
        self._attempt = AttemptTrace(((TRACEPARENT, traceparent),) if traceparent else ())

    def attempt(self, served: Served, upstream_model: str, provider_kind: str, number: int) -> AttemptTrace:
        """A new upstream attempt of this call (use it with `with`)."""
        return self._attempt

    def end(self, record: CallRecord) -> None:
        """The call has ended; `record` is complete."""


class Tracing:
    """Makes each call's trace. This one, the default, traces nothing."""

    def begin(self, record: CallRecord, parent: Metadata | CallTrace) -> CallTrace:
        """The trace of a new call (`parent`: the caller's metadata) or turn (`parent`: its session's trace)."""
        if isinstance(parent, CallTrace):
            return parent
        for key, value in parent:
            if key == TRACEPARENT and isinstance(value, str) and valid_traceparent(value):
                return CallTrace(value)
        return _NO_TRACE

    def shutdown(self) -> None:
        """Send what is buffered and stop (the process is ending)."""


_NO_TRACE = CallTrace()


def tracing_from_env(env: Mapping[str, str] | None = None) -> Tracing:
    """Tracing as the standard OTEL_* variables ask: off unless OTEL_TRACES_EXPORTER is otlp or console
    (and OTEL_SDK_DISABLED is not true). Raises ValueError for an exporter the gateway does not have."""
    env = os.environ if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("", "none") or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Tracing()
    if exporter not in EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER: expected otlp, console or none, got {exporter!r}")
    try:
        from server.observe.otel import otel_tracing  # the `otel` extra; imported only when tracing is on
    except ImportError as exc:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={exporter} needs the OpenTelemetry packages: pip install -e '.[otel]'"
        ) from exc
    return otel_tracing(exporter, env)
