"""Behaviour of the text/event-stream decoder (WHATWG HTML "event stream interpretation")."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable

import pytest

from server.sse import ServerSentEvent, SSEDecoder, SSEEventTooLarge, SSELineTooLong

E = ServerSentEvent


def decode(chunks: Iterable[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events


def splits(stream: bytes) -> Iterable[list[bytes]]:
    """The stream whole, cut in two at every byte offset, and one byte at a time."""
    yield [stream]
    for i in range(len(stream) + 1):
        yield [stream[:i], stream[i:]]
    yield [stream[i : i + 1] for i in range(len(stream))]


# stream -> the events it decodes to (an event the stream leaves unterminated is never returned)
CASES: dict[str, tuple[bytes, list[ServerSentEvent]]] = {
    # line endings
    "LF": (b"data: a\n\ndata: b\n\n", [E("a"), E("b")]),
    "CRLF": (b"data: a\r\n\r\ndata: b\r\n\r\n", [E("a"), E("b")]),
    "CR": (b"data: a\r\rdata: b\r\r", [E("a"), E("b")]),
    "mixed endings": (b"data: a\r\ndata: b\rdata: c\n\r\n", [E("a\nb\nc")]),
    "CR then CRLF is two line breaks": (b"data: a\r\r\n", [E("a")]),
    "LF CR is two line breaks": (b"data: a\n\r", [E("a")]),
    # comments
    "comment ignored": (b": keep-alive\n\n:\ndata: a\n:x\n\n", [E("a")]),
    "comment-only stream": (b": ping\n\n: ping\n\n", []),
    # data
    "multi-line data joined with LF": (b"data: a\ndata: b\ndata: c\n\n", [E("a\nb\nc")]),
    "empty data line is dispatched": (b"data:\n\n", [E("")]),
    "empty data lines keep their LFs": (b"data\ndata\n\n", [E("\n")]),
    "data lines around an empty one": (b"data: a\ndata:\ndata: b\n\n", [E("a\n\nb")]),
    "no space after colon": (b"data:a\n\n", [E("a")]),
    "only one leading space stripped": (b"data:  a \n\n", [E(" a ")]),
    "tab is not stripped": (b"data:\ta\n\n", [E("\ta")]),
    "only the first colon separates": (b'data: {"a":"b:c"}\n\n', [E('{"a":"b:c"}')]),
    "field without colon has empty value": (b"data\n\n", [E("")]),
    "field names are case-sensitive": (b"Data: a\nDATA: b\ndata: c\n\n", [E("c")]),
    "field name with trailing space is unknown": (b"data : a\ndata: b\n\n", [E("b")]),
    # event type
    "event sets type": (b"event: delta\ndata: a\n\n", [E("a", event="delta")]),
    "empty event means message": (b"event:\ndata: a\n\n", [E("a")]),
    "event type resets after dispatch": (
        b"event: x\ndata: a\n\ndata: b\n\n",
        [E("a", event="x"), E("b")],
    ),
    "last event field wins": (b"event: x\nevent: y\ndata: a\n\n", [E("a", event="y")]),
    # id
    "id persists across events": (
        b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n",
        [E("a", id="1"), E("b", id="1"), E("c", id="2")],
    ),
    "empty id resets to empty string": (
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [E("a", id="1"), E("b", id="")],
    ),
    "id with NUL is ignored": (
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [E("a", id="1"), E("b", id="1")],
    ),
    "id without data still updates the last id": (b"id: 7\n\ndata: a\n\n", [E("a", id="7")]),
    # retry
    "retry in digits": (b"retry: 3000\ndata: a\n\n", [E("a", retry=3000)]),
    "retry is per event block": (b"retry: 10\ndata: a\n\ndata: b\n\n", [E("a", retry=10), E("b")]),
    "retry not digits ignored": (b"retry: 1.5\ndata: a\n\n", [E("a")]),
    "retry negative ignored": (b"retry: -1\ndata: a\n\n", [E("a")]),
    "retry with space ignored": (b"retry: 10 \ndata: a\n\n", [E("a")]),
    "retry empty ignored": (b"retry:\ndata: a\n\n", [E("a")]),
    "retry non-ASCII digits ignored": ("retry: ١٢\ndata: a\n\n".encode(), [E("a")]),
    # unknown fields and non-dispatch
    "unknown field ignored": (b"foo: bar\ndata: a\n\n", [E("a")]),
    "block without data is not dispatched": (b"event: x\n\ndata: a\n\n", [E("a")]),
    "event type resets even without dispatch": (b"event: x\nretry: 5\n\ndata: a\n\n", [E("a")]),
    "extra blank lines do nothing": (b"\n\n\ndata: a\n\n\n\n", [E("a")]),
    # BOM
    "leading BOM stripped": (b"\xef\xbb\xbfdata: a\n\n", [E("a")]),
    "BOM before a field name is stripped only once": (
        b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
        [E("b")],
    ),
    "BOM later in the stream is data": (
        b"data: a\n\ndata: \xef\xbb\xbfb\n\n",
        [E("a"), E("\ufeffb")],
    ),
    # UTF-8
    "multi-byte UTF-8": ("data: héllo — 世界 👋\n\n".encode(), [E("héllo — 世界 👋")]),
    "invalid UTF-8 replaced": (b"data: a\xffb\xe2\x82\n\n", [E("a\ufffdb\ufffd")]),
    # end of stream
    "empty stream": (b"", []),
    "unterminated final event discarded": (b"data: a\n\ndata: b\n", [E("a")]),
    "partial final line discarded": (b"data: a\n\ndata: b", [E("a")]),
    "final event without blank line discarded": (b"data: a", []),
    "trailing event field without blank line": (b"data: a\n\nevent: x\n", [E("a")]),
    "trailing comment": (b"data: a\n\n: bye\n", [E("a")]),
    "final CR terminates": (b"data: a\r\r", [E("a")]),
    "partial BOM alone": (b"\xef\xbb", []),
}


@pytest.mark.parametrize(("stream", "expected"), CASES.values(), ids=CASES.keys())
def test_decodes(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode([stream]) == expected


@pytest.mark.parametrize(("stream", "expected"), CASES.values(), ids=CASES.keys())
def test_decodes_the_same_however_the_stream_is_split(stream: bytes, expected: list[ServerSentEvent]) -> None:
    for chunks in splits(stream):
        assert decode(chunks) == expected, chunks


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b"data: a\r", b"\ndata: b\r\n\r\n"], [E("a\nb")], id="CR|LF is one line break"),
        pytest.param([b"data: a\r", b"", b"\n\r\n"], [E("a")], id="CR|empty read|LF"),
        pytest.param([b"data: a\r\n\r", b"\n"], [E("a")], id="CRLF CR|LF"),
        pytest.param([b"data: a\r", b"\r", b"\n"], [E("a")], id="CR|CR|LF"),
        pytest.param([b"data: a\r", b"data: b\r\r"], [E("a\nb")], id="CR|no LF"),
        pytest.param([b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"], [E("a")], id="BOM split"),
        pytest.param([b"\xef\xbb", b"data: a\n\n"], [], id="partial BOM is not a BOM"),
        pytest.param([b"data: \xe4\xb8", b"\x96\n\n"], [E("世")], id="UTF-8 split in a char"),
        pytest.param([b"data: \xf0", b"\x9f", b"\x91", b"\x8b\n", b"\n"], [E("👋")], id="emoji byte by byte"),
        pytest.param([bytearray(b"data: a\n"), bytearray(b"\n")], [E("a")], id="bytearray chunks"),
    ],
)
def test_chunk_boundaries(chunks: list[bytes], expected: list[ServerSentEvent]) -> None:
    assert decode(chunks) == expected


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    steps = [
        # chunk, events it completes
        (b"data: a\n", []),
        (b"\ndata: b\n\nda", [E("a"), E("b")]),
        (b"ta: c\n\n", [E("c")]),
    ]
    assert [decoder.feed(chunk) for chunk, _ in steps] == [events for _, events in steps]


def test_the_last_event_id_persists_even_through_blocks_without_data_and_retry_does_not() -> None:
    decoder = SSEDecoder()
    chunks = [b"data: a\n\n", b"retry: 2500\nid: 42\n\n", b"data: b\n\n", b"retry: x\nid: 4\x002\ndata: c\n\n"]
    chunks += [b"id\nretry: 7\ndata: d\n\n", b"data: e\n\n"]
    assert [event for chunk in chunks for event in decoder.feed(chunk)] == [
        E("a"),
        E("b", id="42"),
        E("c", id="42"),
        E("d", id="", retry=7),
        E("e", id=""),
    ]


# A recorded OpenAI chat-completions stream (stream_options.include_usage=true).
OPENAI_DATA = [
    '{"id":"chatcmpl-AWx3nq9KZ1","object":"chat.completion.chunk","created":1732233600,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,'
    '"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],'
    '"usage":null}',
    '{"id":"chatcmpl-AWx3nq9KZ1","object":"chat.completion.chunk","created":1732233600,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,'
    '"delta":{"content":"Héllo"},"logprobs":null,"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-AWx3nq9KZ1","object":"chat.completion.chunk","created":1732233600,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,'
    '"delta":{"content":", 世界"},"logprobs":null,"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-AWx3nq9KZ1","object":"chat.completion.chunk","created":1732233600,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,'
    '"delta":{"content":" 👋\\n\\nHow can I help?"},"logprobs":null,"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-AWx3nq9KZ1","object":"chat.completion.chunk","created":1732233600,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,'
    '"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}',
    '{"id":"chatcmpl-AWx3nq9KZ1","object":"chat.completion.chunk","created":1732233600,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[],'
    '"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21,'
    '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}',
    "[DONE]",
]
OPENAI_STREAM = "".join(f"data: {d}\n\n" for d in OPENAI_DATA).encode()
OPENAI_EVENTS = [E(d) for d in OPENAI_DATA]


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(OPENAI_STREAM, id="LF"),
        pytest.param(OPENAI_STREAM.replace(b"\n", b"\r\n"), id="CRLF"),
        pytest.param(OPENAI_STREAM.replace(b"\n", b"\r"), id="CR"),
        pytest.param(b": OPENROUTER PROCESSING\n\n" + OPENAI_STREAM, id="leading comment"),
    ],
)
def test_openai_stream_split_at_every_byte(stream: bytes) -> None:
    assert all(json.loads(e.data) for e in OPENAI_EVENTS[:-1])
    for chunks in splits(stream):
        assert decode(chunks) == OPENAI_EVENTS, chunks


def test_an_openai_stream_cut_mid_event_gives_the_events_before_the_cut() -> None:
    cut = OPENAI_STREAM.index(b'finish_reason":"stop')
    assert decode([OPENAI_STREAM[:cut]]) == OPENAI_EVENTS[:4]


# --- Differential test against a straightforward transcription of the spec ---


def reference_decode(stream: bytes) -> list[ServerSentEvent]:
    text = stream.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    events: list[ServerSentEvent] = []
    data, event_type, last_id, retry = "", "", None, None
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:  # the last piece is unterminated
        if line == "":
            if data:
                events.append(E(data.removesuffix("\n"), event_type or "message", last_id, retry))
            data, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events


FRAGMENTS = [
    b"data",
    b"data:",
    b"data: ",
    b"event:",
    b"id: ",
    b"retry: ",
    b"12",
    b"x",
    b":",
    b" ",
    b"\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\x00",
    b"\xef\xbb\xbf",
    "é世👋".encode(),
    b"\xf0\x9f",
]


@pytest.mark.parametrize("seed", range(200))
def test_matches_reference_on_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(rng.choices(FRAGMENTS, k=rng.randint(0, 40)))
    cuts = sorted(rng.sample(range(len(stream) + 1), k=min(len(stream) + 1, rng.randint(0, 6))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert decode(chunks) == reference_decode(stream), chunks


@pytest.mark.parametrize("pieces", [[b"data: " + b"x" * 2000], [b"data: ", b"x" * 1000, b"x" * 1000]])
def test_a_line_longer_than_the_limit_is_an_error_not_unbounded_memory(pieces: list[bytes]) -> None:
    decoder = SSEDecoder(max_line_bytes=1024)
    for piece in pieces[:-1]:
        assert decoder.feed(piece) == []
    with pytest.raises(SSELineTooLong):
        decoder.feed(pieces[-1])


def test_lines_up_to_the_limit_are_fine() -> None:
    decoder = SSEDecoder(max_line_bytes=1024)
    assert decoder.feed(b"data: " + b"x" * 1000) == []
    assert decoder.feed(b"\n\n") == [ServerSentEvent(data="x" * 1000)]


@pytest.mark.parametrize(
    "pieces",
    [
        [b"data: " + b"x" * 500 + b"\n"] * 3,  # many short lines, one per read, never a blank line
        [b"data: " + b"x" * 600 + b"\ndata: " + b"y" * 600 + b"\n\n"],  # a whole event in one read
        [b"data:" + b"x" * 700 + b"\n", b"data:" + b"y" * 700 + b"\n"],  # the slow path (no space)
    ],
)
def test_an_event_larger_than_the_limit_is_an_error_however_its_lines_come(pieces: list[bytes]) -> None:
    decoder = SSEDecoder(max_line_bytes=1024, max_event_bytes=1024)
    for piece in pieces[:-1]:
        assert decoder.feed(piece) == []
    with pytest.raises(SSEEventTooLarge) as raised:
        decoder.feed(pieces[-1])
    assert raised.value.limit == 1024


def test_events_up_to_the_limit_are_fine_and_the_count_starts_again_with_each_event() -> None:
    decoder = SSEDecoder(max_line_bytes=1024, max_event_bytes=1024)
    line = b"data: " + b"x" * 400 + b"\n"
    for _ in range(3):
        assert decoder.feed(line) == []
        assert decoder.feed(line + b"\n") == [ServerSentEvent(data="x" * 400 + "\n" + "x" * 400)]
