"""The process's log output: text lines for people, or one JSON object per line for log shippers.

    text   2026-12-01 14:03:11,402 INFO server.access: Generate client=team-a model=… request_id=5d0c…
           2026-12-01 14:03:11,398 WARNING server.routing.plan: … [request_id=5d0c…]
    json   {"time": "2026-12-01T14:03:11.402Z", "level": "INFO", "logger": "server.access",
            "message": "Generate OK", "request_id": "5d0c…", "method": "Generate", "client": "team-a", …}

Every line written while a call runs carries the call's request id (`CallFilter` reads it from
`CURRENT_REQUEST_ID`, which every task of the call inherits). An access record (server/observe/record.py)
brings its values as `access`: in JSON they become keys of the object, so a shipper needs no parsing.

Both formats scrub every registered secret from the whole line (errors.scrub), a last line of defence:
no log call is meant to carry one in the first place.

Nothing a peer sends can forge a line or reach the terminal of whoever tails the log. Values a client or an
upstream chose are bounded and escaped where they are logged (record.log_value); as a last line of defence,
a text line's message is cut to MAX_MESSAGE_CHARS and every control character in it (newline, ESC, NUL, C1,
the Unicode line separators) is written as an escape, and a traceback's lines are indented, so that only a
record's first line starts at the first column. JSON escapes them itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

from server.errors import scrub
from server.observe.request_id import CURRENT_REQUEST_ID

__all__ = [
    "LOG_FORMATS",
    "MAX_MESSAGE_CHARS",
    "CallFilter",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "escape_controls",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

_ACCESS_LOGGER = "server.access"  # its lines name their request id themselves
# The longest message one log line carries (a traceback comes on top); longer ones are cut and marked.
MAX_MESSAGE_CHARS = 8192
_CONTROLS = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}
_CONTROLS_BUT_NEWLINE = {code: text for code, text in _CONTROLS.items() if code != 0x0A}


def escape_controls(text: str) -> str:
    """`text` with every control character (newline, ESC, NUL, C1, U+2028/2029) written as an escape."""
    return text.translate(_CONTROLS)


def _bounded_message(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


class CallFilter(logging.Filter):
    """Stamps each record with the request id of the call it was written in ("" outside calls)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = CURRENT_REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(_bounded_message(record.message))
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", "")
        if request_id and record.name != _ACCESS_LOGGER:
            line += f" [request_id={request_id}]"
        return line

    def format(self, record: logging.LogRecord) -> str:
        """The line; a traceback after it has its control characters but newlines escaped and each of its
        lines indented, so that an exception's message (which may hold what a peer sent) starts no line."""
        head, newline, rest = super().format(record).partition("\n")
        if newline:
            rest = "\n".join(f"  {line}" for line in rest.translate(_CONTROLS_BUT_NEWLINE).split("\n"))
        return scrub(head + newline + rest)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines and control characters are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _bounded_message(record.getMessage()),
        }
        if request_id := getattr(record, "request_id", ""):
            entry["request_id"] = request_id
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            outcome = access.get("code", access.get("outcome", ""))  # a call's code; a shadow's outcome
            entry["message"] = f"{access.get('method', '')} {outcome}"
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str))


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str, log_format: LogFormat, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record at `level` and above to `stream` (stderr) in `log_format`; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(CallFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO; URLs are the upstreams' business, not the operator's log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))
    return handler
