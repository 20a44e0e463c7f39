"""One record per call and per InteractiveStream turn, written when it ends: the access log line, later
metrics and traces, all from the same record so they never disagree.

The record holds what the GenAI conventions ask for (the requested and the serving model, provider,
time to first token, tokens, cost) and the outcome (the gRPC code and the ErrorInfo reason). It never
holds a secret: the client is named by its configured name, never by its token, and no message text is
kept. The per-token path only counts (`deltas` and, once, `first_token_s`).

What a client chose (a model name, a request id) is written bounded and escaped: a name with a space, a
newline or an ANSI escape cannot forge or split a log line.

    Generate client=team-a model=gpt-4.1 served=openai:openai/gpt-4.1 code=OK duration_ms=812.4 ttft_ms=- ...
        ... request_id=5d0c… upstream_request_id=req_9a1…
    InteractiveStream.turn client=team-a session=3f9c… turn_request_id=r1 model=demo ... code=OK ...
    InteractiveStream client=team-a session=3f9c… model=- ... code=OK ... request_id=… turns=2

The same values go with the log record as `access` (a dict, see `fields`), so that JSON logs carry them
as keys rather than as one formatted string (server/observe/logs.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from server.types import Completion, Finish, Served, Usage

__all__ = ["AccessValue", "CallRecord", "access_log", "log_value", "operation_of"]

access_log = logging.getLogger("server.access")

# Longest client-chosen value written as is; longer ones are cut and marked with "…".
MAX_LOGGED_CHARS = 128
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@+=,")


def log_value(value: str) -> str:
    """`value` safe for one space-separated log field: "-" when empty, cut to MAX_LOGGED_CHARS, and any
    character outside a conservative set written as a \\x/\\u escape."""
    if not value:
        return "-"
    cut = value[:MAX_LOGGED_CHARS]
    if not _PLAIN.issuperset(cut):
        cut = "".join(map(_escaped, cut))
    return cut + "…" if len(value) > MAX_LOGGED_CHARS else cut


def _bounded(value: str) -> str | None:
    """`value` cut to MAX_LOGGED_CHARS (JSON escapes the rest itself); None when empty."""
    if not value:
        return None
    return value if len(value) <= MAX_LOGGED_CHARS else value[:MAX_LOGGED_CHARS] + "…"


AccessValue = str | int | float | None


def _escaped(ch: str) -> str:
    if ch in _PLAIN:
        return ch
    point = ord(ch)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


# gen_ai.operation.name of each RPC, as OpenTelemetry's GenAI conventions name operations; the others are "chat".
_OPERATIONS = {"Embed": "embeddings", "CountTokens": "count_tokens"}


def operation_of(method: str) -> str:
    """The GenAI operation of a call of `method` (a bounded label: chat, embeddings or count_tokens)."""
    return _OPERATIONS.get(method, "chat")


@dataclass(slots=True)
class CallRecord:
    method: str
    client: str | None
    started: float = field(default_factory=time.perf_counter)
    model: str = ""  # as the client named it
    session: str = ""  # InteractiveStream: the session id (the gateway's own)
    turn_request_id: str = ""  # InteractiveStream turn: the client's request_id of the turn
    request_id: str = ""  # the call's x-request-id (a turn: its session's)
    end_user: str = ""  # the caller's x-end-user-id, checked (server/policy/identity.py)
    quota_limit: str = ""  # the client limit that refused the call (requests_per_minute, …, models)
    upstream_request_id: str = ""  # the upstream's own id of its answer, bounded (observe/request_id.py)
    served: Served | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    finish_reason: str = ""  # stop, length, content_filter, … ("" until the reply is complete)
    deltas: int = 0
    first_token_s: float | None = None
    turns: int | None = None  # InteractiveStream session: turns accepted
    priority: str = "interactive"  # the call's class in the fair queue (server/policy/fair_queue.py)
    queued_s: float | None = None  # how long the call waited for a slot (None: a slot was free)
    code: str = "OK"
    reason: str = ""
    duration_s: float | None = None  # set by finish(): the one duration the log and the metrics report

    def first_token(self) -> None:
        self.first_token_s = time.perf_counter() - self.started

    def answered(self, reply: Finish | Completion) -> None:
        """The upstream's reply is complete: who served it, its usage, its cost and the upstream's id."""
        self.served, self.usage, self.cost_usd = reply.served, reply.usage, reply.cost_usd
        self.upstream_request_id = reply.upstream_request_id
        self.finish_reason = reply.reason.name.lower()

    def finish(self) -> None:
        self.duration_s = duration_s = time.perf_counter() - self.started
        if not access_log.isEnabledFor(logging.INFO):
            return
        served = self.served
        usage = self.usage
        duration_ms = duration_s * 1000
        access_log.info(
            "%s client=%s%s%s model=%s served=%s code=%s%s duration_ms=%.1f ttft_ms=%s deltas=%d tokens=%s"
            " cost_usd=%s request_id=%s upstream_request_id=%s%s%s",
            self.method,
            self.client or "-",
            f" end_user={log_value(self.end_user)}" if self.end_user else "",
            self._session_fields(),
            log_value(self.model),
            f"{served.provider}:{log_value(served.deployment)}" if served else "-",
            self.code,
            self._reason_fields(),
            duration_ms,
            f"{self.first_token_s * 1000:.1f}" if self.first_token_s is not None else "-",
            self.deltas,
            f"{usage.prompt_tokens}/{usage.completion_tokens}" if usage else "-",
            f"{self.cost_usd:.6f}" if self.cost_usd is not None else "-",
            self.request_id or "-",
            self.upstream_request_id or "-",
            f" turns={self.turns}" if self.turns is not None else "",
            f" priority={self.priority} queued_ms={self.queued_s * 1000:.1f}" if self.queued_s is not None else "",
            extra={"access": self.fields(duration_ms)},
        )

    def fields(self, duration_ms: float) -> dict[str, AccessValue]:
        """The record as flat keys and values for a JSON log line; client-chosen strings bounded."""
        served, usage = self.served, self.usage
        values: dict[str, AccessValue] = {
            "method": self.method,
            "client": self.client,
            "end_user": _bounded(self.end_user),
            "request_id": self.request_id or None,
            "session": self.session or None,
            "turn_request_id": _bounded(self.turn_request_id),
            "model": _bounded(self.model),
            "served_model": served.model if served else None,
            "provider": served.provider if served else None,
            "deployment": _bounded(served.deployment) if served else None,
            "code": self.code,
            "reason": self.reason or None,
            "quota_limit": self.quota_limit or None,
            "finish_reason": self.finish_reason or None,
            "duration_ms": round(duration_ms, 1),
            "priority": self.priority,
            "queued_ms": round(self.queued_s * 1000, 1) if self.queued_s is not None else None,
            "ttft_ms": round(self.first_token_s * 1000, 1) if self.first_token_s is not None else None,
            "deltas": self.deltas,
            "input_tokens": usage.prompt_tokens if usage else None,
            "output_tokens": usage.completion_tokens if usage else None,
            "tokens_estimated": usage.estimated if usage else None,
            "cost_usd": self.cost_usd,
            "upstream_request_id": self.upstream_request_id or None,
            "turns": self.turns,
        }
        return {key: value for key, value in values.items() if value is not None}

    def _reason_fields(self) -> str:
        reason = f" reason={self.reason}" if self.reason else ""
        return f"{reason} limit={self.quota_limit}" if self.quota_limit else reason

    def _session_fields(self) -> str:
        if not self.session:
            return ""
        turn = f" turn_request_id={log_value(self.turn_request_id)}" if self.turn_request_id else ""
        return f" session={self.session}{turn}"
