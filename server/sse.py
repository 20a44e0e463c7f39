"""Incremental Server-Sent Events (``text/event-stream``) decoder.

Implements the WHATWG HTML "event stream interpretation" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* lines end with LF, CRLF or a lone CR; a CR that ends one network read and an LF that starts
  the next are a single CRLF line break;
* a blank line dispatches the event being built; an event with no ``data`` line is not dispatched;
* lines starting with ``:`` are comments;
* ``field:value`` (one optional space after the colon is dropped), a line without a colon is a
  field with an empty value; unknown fields are ignored;
* ``data`` lines accumulate, joined with ``\\n``; ``event`` sets the type (empty -> ``message``);
  ``id`` sets the last event ID, which persists across events (ignored if it contains NUL);
  ``retry`` is honoured only if it is all ASCII digits;
* a UTF-8 BOM at the very start of the stream is dropped; text is decoded as UTF-8 with
  ``errors="replace"``, complete lines only, so a multi-byte character split between reads is
  decoded correctly;
* at end of stream an unterminated event (or partial line) is discarded.

Limits: a line longer than ``max_line_bytes`` without a line break raises :class:`SSELineTooLong`, and an
event whose ``data`` lines add up to more than ``max_event_bytes`` (counted in characters, checked once a
read) raises :class:`SSEEventTooLarge`: an event of many short lines is bounded as well as one long line.

Protocol-level sentinels such as OpenAI's ``data: [DONE]`` are not special here: they are data.

Performance: for the common read (whole events, ending on a line break) :meth:`SSEDecoder.feed`
does one memchr for CR, one UTF-8 decode and one ``str.split`` per read, then a short Python loop
over the lines with a shortcut for ``data: `` lines. Only the incomplete tail of the last line is
buffered (in a ``bytearray``, so a long line arriving in many small reads is not quadratic). CR and
CRLF streams are normalised to LF with two ``bytes.replace`` calls first.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_LINE_BYTES",
    "SSEDecoder",
    "SSEEventTooLarge",
    "SSELineTooLong",
    "SSETooLarge",
    "ServerSentEvent",
]

# The longest line the decoder buffers: far above any real event, low enough that an upstream that never
# sends a line break cannot make the gateway's memory grow without bound.
MAX_LINE_BYTES = 4 * 1024 * 1024
# The most data one event may carry, over all its lines (a real event is a few hundred bytes).
MAX_EVENT_BYTES = 4 * 1024 * 1024


class SSETooLarge(ValueError):
    """The stream sent more than one of the decoder's limits allows; `limit` is that limit in bytes."""

    what = "stream"

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event-stream {self.what} is longer than {limit} bytes")
        self.limit = limit


class SSELineTooLong(SSETooLarge):
    """The stream sent a line longer than the decoder's limit without a line break."""

    what = "line"


class SSEEventTooLarge(SSETooLarge):
    """The stream sent an event whose data lines together are longer than the decoder's limit."""

    what = "event"


_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``id`` is the stream's last event ID at dispatch time (it persists across events, as in the
    spec's ``lastEventId``); ``None`` until the stream sends an ``id`` field, ``""`` after an
    explicit empty ``id:``. ``retry`` is the valid ``retry`` value sent within this event's block,
    if any.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder: feed raw bytes as they arrive from the network, get complete events.

    One decoder per stream. At the end of the stream an unterminated event is simply never returned,
    as the spec says; whether a reply is whole is the wire format's business (an end event, a finish
    reason), not the event stream's.
    """

    __slots__ = (
        "_at_start",
        "_bom_head",
        "_data",
        "_event",
        "_event_bytes",
        "_event_retry",
        "_in_event",
        "_last_id",
        "_max_event_bytes",
        "_max_line_bytes",
        "_skip_lf",
        "_tail",
    )

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max_line_bytes = max_line_bytes
        self._max_event_bytes = max_event_bytes
        self._event_bytes = 0  # characters in the data lines of the event being built
        self._tail = bytearray()  # bytes of an incomplete line (never contains CR or LF)
        self._skip_lf = False  # previous read ended with CR: drop one LF at the start of the next
        self._at_start = True  # still deciding whether the stream starts with a BOM
        self._bom_head = b""  # first bytes of the stream while they may be a partial BOM
        self._data: list[str] = []  # data lines of the event being built
        self._event = ""  # event type buffer ("" -> "message")
        self._event_retry: int | None = None  # retry sent in the current event block
        self._in_event = False  # a field line was seen since the last blank line
        self._last_id: str | None = None  # last event ID buffer (persists)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume the next bytes of the stream; return the events they complete (often [])."""
        # NB: `13 in buf` / `10 in buf` (int needle, a memchr) are ~10x faster than `b"\r" in buf`.
        if self._at_start:
            stripped = self._strip_bom(chunk)
            if stripped is None:
                return []
            chunk = stripped

        buf: bytes | bytearray
        tail = self._tail
        if tail:
            # Invariant: a non-empty tail means the previous read did not end with CR.
            tail += chunk
            if 10 not in chunk and 13 not in chunk:
                if len(tail) > self._max_line_bytes:
                    raise SSELineTooLong(self._max_line_bytes)
                return []  # still inside the same line: amortised O(1) append
            buf = tail
            self._tail = bytearray()
        else:
            buf = chunk
            if self._skip_lf:
                if not buf:
                    return []
                self._skip_lf = False
                if buf[0] == 10:  # the LF of a CRLF split across reads
                    buf = buf[1:]

        if 13 in buf:
            if buf[-1] == 13:
                self._skip_lf = True  # the CR ends a line now; an LF starting the next read is its pair
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            end = buf.rfind(b"\n")
        elif buf and buf[-1] == 10:
            end = len(buf) - 1  # the common case: the read ends on a line break
        else:
            end = buf.rfind(b"\n")
            if end < 0:
                if len(buf) > self._max_line_bytes:
                    raise SSELineTooLong(self._max_line_bytes)
                if buf:
                    self._tail = bytearray(buf)
                return []
        if end != len(buf) - 1:
            self._tail = bytearray(buf[end + 1 :])
        # Decoding the whole buffer is equivalent to decoding each complete line on its own, since
        # LF is ASCII and so never part of a multi-byte sequence; the (possibly truncated) tail's
        # text is decoded too, but dropped by pop() and decoded again once its line is complete.
        lines = buf.decode("utf-8", "replace").split("\n")
        lines.pop()

        events: list[ServerSentEvent] = []
        data = self._data
        event = self._event
        last_id = self._last_id
        event_retry = self._event_retry
        in_event = self._in_event
        size = self._event_bytes
        for line in lines:
            if not line:  # blank line: dispatch
                if data:
                    if size > self._max_event_bytes:
                        raise SSEEventTooLarge(self._max_event_bytes)
                    events.append(ServerSentEvent("\n".join(data), event or "message", last_id, event_retry))
                    data = []
                    size = 0
                    event = ""
                    event_retry = None
                    in_event = False
                elif in_event:
                    event = ""
                    event_retry = None
                    in_event = False
                continue
            if line[:6] == "data: ":  # fast path for the overwhelmingly common line
                data.append(line[6:])
                size += len(line)
                in_event = True
                continue
            colon = line.find(":")
            if colon == 0:
                continue  # comment
            in_event = True
            if colon < 0:
                name = line
                value = ""
            else:
                name = line[:colon]
                value = line[colon + 1 :]
                if value[:1] == " ":
                    value = value[1:]
            if name == "data":
                data.append(value)
                size += len(line)
            elif name == "event":
                event = value
            elif name == "id":
                if "\0" not in value:
                    last_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                event_retry = int(value)
            # any other field is ignored
        # An event still being built is checked once a read: one read adds at most its own size to it.
        if size > self._max_event_bytes:
            raise SSEEventTooLarge(self._max_event_bytes)
        self._event_bytes = size
        self._data = data
        self._event = event
        self._last_id = last_id
        self._event_retry = event_retry
        self._in_event = in_event
        return events

    def _strip_bom(self, chunk: bytes) -> bytes | None:
        head = self._bom_head + chunk
        if len(head) < 3 and _BOM.startswith(head):
            self._bom_head = head  # may still turn out to be a BOM
            return None
        self._at_start = False
        self._bom_head = b""
        return head[3:] if head.startswith(_BOM) else head
