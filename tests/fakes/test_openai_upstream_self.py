"""Self-tests for the fake OpenAI upstream (fast: real sockets on 127.0.0.1, httpx client)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .http_server import SIGNATURE_WINDOW_S, WAIT_TIMEOUT_S
from .openai_upstream import FakeOpenAIUpstream

REPO_ROOT = Path(__file__).resolve().parents[2]
PATH = "/chat/completions"


def _req(model: str, text: str = "hello world foo", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": text},
        ],
        **extra,
    }


async def _raw_events(resp: httpx.Response) -> list[str]:
    """The SSE events of a response, split on blank lines, exactly as sent."""
    raw = b""
    async for chunk in resp.aiter_raw():
        raw += chunk
    assert raw.endswith(b"\n\n")
    return [e.decode() for e in raw.split(b"\n\n")[:-1]]


async def _events(resp: httpx.Response) -> list[Any]:
    """Parsed `data:` payloads ("[DONE]" stays a string)."""
    out: list[Any] = []
    for e in await _raw_events(resp):
        assert e.startswith("data: ")
        payload = e[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def _stream_events(c: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    async with c.stream("POST", PATH, json=body) as r:
        assert r.status_code == 200
        return await _events(r)


def _content(chunk: Any) -> Any:
    return chunk["choices"][0]["delta"].get("content")


@pytest.mark.asyncio
async def test_ordinary_stream_exact_sequence() -> None:
    async with (
        FakeOpenAIUpstream() as up,
        httpx.AsyncClient(base_url=up.base_url) as c,
        c.stream("POST", PATH, json=_req("gpt-test", stream=True)) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["transfer-encoding"] == "chunked"
        events = await _events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 5  # role, 3 content, finish
    ids = {ch["id"] for ch in chunks}
    assert len(ids) == 1
    assert next(iter(ids)).startswith("chatcmpl-")
    for ch in chunks:
        assert ch["object"] == "chat.completion.chunk"
        assert ch["model"] == "gpt-test"
        assert "usage" not in ch
        assert ch["choices"][0]["index"] == 0
        assert ch["choices"][0]["logprobs"] is None
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [_content(ch) for ch in chunks[1:4]] == ["hello", " world", " foo"]
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:4])
    assert chunks[4]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    rec = up.requests[0]
    assert (rec.method, rec.path, rec.model) == ("POST", "/v1/chat/completions", "gpt-test")
    assert rec.headers["content-type"] == "application/json"
    assert re.fullmatch(r"req_[0-9a-f]{32}", r.headers["x-request-id"])
    assert up.response_ids == [r.headers["x-request-id"]]


@pytest.mark.asyncio
async def test_include_usage_and_max_tokens() -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        usage_opt = {"include_usage": True}
        events = await _stream_events(c, _req("gpt-test", text="  a  b c\n", stream=True, stream_options=usage_opt))
        assert events[-1] == "[DONE]"
        *chunks, usage = events[:-1]
        assert all(ch["usage"] is None for ch in chunks)
        assert "".join(_content(ch) or "" for ch in chunks) == "  a  b c\n"
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

        events = await _stream_events(c, _req("tokens-10", stream=True, max_tokens=4, stream_options=usage_opt))
        assert [_content(ch) for ch in events[1:5]] == ["t0", " t1", " t2", " t3"]
        assert events[5]["choices"][0]["finish_reason"] == "length"
        assert events[6]["usage"]["completion_tokens"] == 4

        events = await _stream_events(c, _req("no-usage", stream=True, stream_options=usage_opt))
        assert len(events) == 6
        assert events[-1] == "[DONE]"
        assert all("usage" not in ch for ch in events[:-1])


@pytest.mark.asyncio
async def test_non_stream_json() -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        r = await c.post(PATH, json=_req("gpt-test"))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        obj = r.json()
        assert obj["object"] == "chat.completion"
        assert obj["id"].startswith("chatcmpl-")
        assert obj["model"] == "gpt-test"
        assert isinstance(obj["created"], int)
        assert obj["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello world foo", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ]
        assert obj["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

        choice = (await c.post(PATH, json=_req("gpt-test", max_tokens=2))).json()["choices"][0]
        assert choice["message"]["content"] == "hello world"
        assert choice["finish_reason"] == "length"

        r = await c.post("/models", json={})
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "Invalid URL (POST /v1/models)"


@pytest.mark.asyncio
async def test_keep_alive_and_chunked_request_body() -> None:
    async with FakeOpenAIUpstream() as up:
        async with httpx.AsyncClient(base_url=up.base_url) as c:
            r1 = await c.post(PATH, json=_req("gpt-test"))
            await _stream_events(c, _req("gpt-test", stream=True))

            async def gen() -> AsyncIterator[bytes]:
                data = json.dumps(_req("gpt-test", text="chunked body")).encode()
                for i in range(0, len(data), 7):
                    yield data[i : i + 7]

            r3 = await c.post(PATH, content=gen())
            assert r1.status_code == 200
            assert r3.json()["choices"][0]["message"]["content"] == "chunked body"
            assert up.requests[2].headers["transfer-encoding"] == "chunked"
            assert up.open_connections == 1
            assert up.connections_accepted == 1
            assert len({rq.connection_id for rq in up.requests}) == 1
        await up.wait_until_idle()
        assert up.open_connections == 0


@pytest.mark.asyncio
async def test_fault_429_variants_and_auth() -> None:
    async with FakeOpenAIUpstream(api_key="sk-right") as up:
        headers = {"authorization": "Bearer sk-right"}
        async with httpx.AsyncClient(base_url=up.base_url, headers=headers) as c:
            r = await c.post(PATH, json=_req("fault-429", stream=True))
            assert r.status_code == 429
            assert r.headers["retry-after"] == "7"
            assert r.json()["error"] == {
                "message": r.json()["error"]["message"],
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
            r = await c.post(PATH, json=_req("fault-429-no-retry-after"))
            assert r.status_code == 429
            assert "retry-after" not in r.headers
            r = await c.post(PATH, json=_req("fault-429-ms"))
            assert r.headers["retry-after-ms"] == "1500"
            assert "retry-after" not in r.headers
            r = await c.post(PATH, json=_req("fault-401"))
            assert r.status_code == 401
            assert "sk-fake***1234" in r.json()["error"]["message"]
        async with httpx.AsyncClient(base_url=up.base_url) as c:
            r = await c.post(PATH, json=_req("gpt-test"))
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.asyncio
async def test_fault_reset_mid_after_two_chunks() -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        contents: list[str] = []

        async def consume() -> None:
            async with c.stream("POST", PATH, json=_req("fault-reset-mid", stream=True)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        delta = json.loads(line[6:])["choices"][0]["delta"]
                        if "role" not in delta:
                            contents.append(delta["content"])

        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await consume()
        assert contents == ["hello", " world"]
        assert up.disconnects == []  # our own reset is not a client disconnect

        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await c.post(PATH, json=_req("fault-reset-before"))


@pytest.mark.asyncio
async def test_cut_mid_inband_and_malformed() -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        async with c.stream("POST", PATH, json=_req("fault-cut-mid", stream=True)) as r:
            raw = await _raw_events(r)
        assert len(raw) == 3
        assert "[DONE]" not in raw[-1]

        events = await _stream_events(c, _req("fault-inband-error-after", stream=True))
        assert len(events) == 4
        assert events[-1]["error"]["code"] == "overloaded"

        async with c.stream("POST", PATH, json=_req("fault-malformed", stream=True)) as r:
            raw = await _raw_events(r)
        assert raw[1] == 'data: {"choices":[{"delta":{"content":"x"'
        assert raw[-1] == "data: [DONE]"
        assert up.connections_accepted == 1  # all of these keep the connection usable


@pytest.mark.asyncio
async def test_stall_then_client_cancel_records_the_disconnect() -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:

        async def consume() -> None:
            async with c.stream("POST", PATH, json=_req("fault-stall", stream=True)) as r:
                assert r.status_code == 200
                async for _ in r.aiter_raw():
                    pass

        task = asyncio.create_task(consume())
        await up.wait_for_requests(1)
        assert up.disconnects == []
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        d = await up.wait_for_disconnect()  # a stall never ends by itself: only the cancel can end it
        assert d.model == "fault-stall"
        assert d.time >= cancelled_at


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_hold_keeps_every_reply_before_its_first_piece_until_release(stream: bool) -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        up.hold()
        replies = [asyncio.create_task(c.post(PATH, json=_req("gpt-test", text=t, stream=stream))) for t in "ab"]
        await up.wait_for_requests(2)
        # Both requests arrived and neither answer can have been written: each waits at the gate.
        assert not any(r.done() for r in replies)
        up.release()
        answers = await asyncio.gather(*replies)
        after = await c.post(PATH, json=_req("gpt-test", text="c", stream=stream))  # released stays open

    texts = [_text(r, stream) for r in [*answers, after]]
    assert texts == ["a", "b", "c"]


def _text(response: httpx.Response, stream: bool) -> str:
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: {")]
    return "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events if json.loads(e)["choices"])


@pytest.mark.asyncio
async def test_a_client_that_leaves_a_held_reply_is_a_disconnect() -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        up.hold()
        task = asyncio.create_task(c.post(PATH, json=_req("gpt-test", stream=True)))
        await up.wait_for_requests(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        d = await up.wait_for_disconnect()
    assert d.model == "gpt-test"


@pytest.mark.asyncio
async def test_split_bytes_stream() -> None:
    async with FakeOpenAIUpstream() as up, httpx.AsyncClient(base_url=up.base_url) as c:
        events = await _stream_events(c, _req("split-bytes", stream=True))
        assert [_content(e) for e in events[1:4]] == ["hello", " world", " foo"]
        assert events[-1] == "[DONE]"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cli_prints_port_and_exits_zero_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.openai_upstream",
        "--port",
        "0",
        cwd=str(REPO_ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), WAIT_TIMEOUT_S)).decode()
        assert line.startswith("PORT ")
        port = int(line.split()[1])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as c:
            r = await c.post(PATH, json=_req("tokens-3"))
            assert r.json()["choices"][0]["message"]["content"] == "t0 t1 t2"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT_TIMEOUT_S) == 0
        assert await proc.stdout.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_signing_upstream_accepts_a_fresh_signature_and_refuses_a_bad_or_stale_one() -> None:
    secret = "signing-secret"
    async with FakeOpenAIUpstream(signing_secret=secret) as up, httpx.AsyncClient(base_url=up.base_url) as c:
        body = json.dumps(_req("gpt-test")).encode()

        def signed(timestamp: int, key: str = secret) -> dict[str, str]:
            message = f"POST:/v1/chat/completions:{timestamp}:".encode() + body
            mac = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
            return {"x-timestamp": str(timestamp), "x-signature": mac, "content-type": "application/json"}

        now = int(time.time())
        fresh = await c.post(PATH, content=body, headers=signed(now))
        wrong_key = await c.post(PATH, content=body, headers=signed(now, "other"))
        stale = await c.post(PATH, content=body, headers=signed(now - SIGNATURE_WINDOW_S - 60))
        future = await c.post(PATH, content=body, headers=signed(now + SIGNATURE_WINDOW_S + 60))
        unsigned = await c.post(PATH, content=body, headers={"content-type": "application/json"})

    assert fresh.status_code == 200
    assert (wrong_key.status_code, wrong_key.json()["error"]["message"]) == (
        401,
        "Invalid request signature: bad X-Signature.",
    )
    assert (stale.status_code, stale.json()["error"]["message"]) == (
        401,
        "Invalid request signature: stale X-Timestamp.",
    )
    assert future.status_code == 401
    assert unsigned.status_code == 401


async def test_a_key_can_be_answered_with_a_fault_of_its_own() -> None:
    async with FakeOpenAIUpstream(api_key=("sk-a", "sk-b")) as up, httpx.AsyncClient(base_url=up.base_url) as c:
        up.key_faults["sk-a"] = "fault-429"
        limited = await c.post(PATH, json=_req("gpt-test"), headers={"authorization": "Bearer sk-a"})
        served = await c.post(PATH, json=_req("gpt-test"), headers={"authorization": "Bearer sk-b"})
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")
    assert served.status_code == 200
