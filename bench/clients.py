"""The two ways a bench client streams one reply, measured the same way.

    SseClient       POST {base_url}/chat/completions with aiohttp (the fake upstream itself, or the LiteLLM
                    proxy in front of it); SSE decoded with the gateway's own decoder and each event
                    JSON-parsed, as any OpenAI-compatible client must. aiohttp, not httpx: httpx's own client
                    caps near 3,000 tokens/s here and would flatter everything measured against it.
    GatewayClient   AIService.StreamGenerate (or, `unary`, Generate) through the gateway or the floor, grpc.aio

`stream(tally)` sends one request, counts every token into `tally.tokens` as it arrives (so a measurement
window can cut a stream in the middle), reads the stream to its end and returns the seconds to the first
delta and the number of tokens. An SSE event carries one token; a gateway chunk may carry several (it joins
deltas that reach it together), so the gateway's are counted as the fake upstream's words. A failed stream
raises `StreamFailed` (or the transport's error). A unary Generate counts as one delta that arrives when the
whole reply does.
"""

from __future__ import annotations

import json
import time
from typing import Protocol

import aiohttp
import grpc

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.sse import SSEDecoder

__all__ = ["HOLD_TIMEOUT_S", "TRANSPORT_ERRORS", "GatewayClient", "SseClient", "StreamClient", "StreamFailed", "Tally"]

PROMPT = "bench"
# A stream that stalls this long has failed: the fake upstream answers without delay (the held streams of
# `python -m bench.load hold` wait longer: HOLD_TIMEOUT_S).
STREAM_TIMEOUT_S = 30.0
HOLD_TIMEOUT_S = 900.0


class StreamFailed(Exception):
    """A stream ended without a whole reply."""


# What a stream may raise when the gateway or upstream misbehaves; a load process counts these as errors.
TRANSPORT_ERRORS = (StreamFailed, aiohttp.ClientError, grpc.aio.AioRpcError, TimeoutError)


class Tally:
    """Counters shared by the workers of one load process. One increment per token: keep it cheap."""

    __slots__ = ("errors", "streams", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.streams = 0
        self.errors = 0


class StreamClient(Protocol):
    async def stream(self, tally: Tally) -> tuple[float, int]: ...

    async def wait_ready(self) -> None: ...

    async def aclose(self) -> None: ...


class SseClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        connections: int,
        prompt: str = PROMPT,
        api_key: str = "",
        timeout_s: float = STREAM_TIMEOUT_S,
    ) -> None:
        self._timeout_s = timeout_s
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        # The same body the gateway sends upstream, usage included.
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        self._body = json.dumps(body, separators=(",", ":")).encode()
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._connections)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self._timeout_s)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)

    async def wait_ready(self) -> None:
        await self.stream(Tally())  # opens the first connection

    async def stream(self, tally: Tally) -> tuple[float, int]:
        if self._session is None:
            self._session = self._open()
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        done = False
        async with self._session.post(self._url, data=self._body, headers=self._headers) as response:
            if response.status != 200:
                raise StreamFailed(f"HTTP {response.status}")
            # Read to the end, past [DONE]: a body left unread would cost the connection its keep-alive.
            decoder = SSEDecoder()
            async for chunk in response.content.iter_any():
                for event in decoder.feed(chunk):
                    if event.data == "[DONE]":
                        done = True
                        continue
                    choices = json.loads(event.data).get("choices")
                    if choices and choices[0]["delta"].get("content"):
                        if not tokens:
                            first = time.perf_counter() - start
                        tokens += 1
                        tally.tokens += 1
        if not done:
            raise StreamFailed("the stream ended without [DONE]")
        return first, tokens

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class GatewayClient:
    def __init__(
        self,
        address: str,
        model: str,
        *,
        prompt: str = PROMPT,
        unary: bool = False,
        timeout_s: float = STREAM_TIMEOUT_S,
    ) -> None:
        self._timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(address)
        stub = pb_grpc.AIServiceStub(self._channel)
        self._call = stub.StreamGenerate
        self._unary = stub.Generate if unary else None
        messages = [pb.Message(role="user", content=prompt)]
        self._request = pb.StreamGenerateRequest(model=model, messages=messages)
        self._unary_request = pb.GenerateRequest(model=model, messages=messages)

    async def wait_ready(self) -> None:
        await self._channel.channel_ready()

    async def stream(self, tally: Tally) -> tuple[float, int]:
        if self._unary is not None:
            return await self._generate(tally)
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        call = self._call(self._request, timeout=self._timeout_s)
        # read() rather than `async for`: one await per message, without an async generator around it.
        while True:
            chunk = await call.read()
            if chunk is grpc.aio.EOF:
                raise StreamFailed("the gateway stream ended without a final chunk")
            assert isinstance(chunk, pb.StreamChunk)
            if chunk.is_complete:
                break
            if chunk.delta:
                if not tokens:
                    first = time.perf_counter() - start
                # The fake upstream's tokens are words ("t0", " t1", …), and one chunk may join several of
                # them (the gateway coalesces deltas that reach it together).
                n = len(chunk.delta.split())
                tokens += n
                tally.tokens += n
        if await call.read() is not grpc.aio.EOF:
            raise StreamFailed("the gateway sent a chunk after the final one")
        return first, tokens

    async def _generate(self, tally: Tally) -> tuple[float, int]:
        assert self._unary is not None
        start = time.perf_counter()
        reply = await self._unary(self._unary_request, timeout=self._timeout_s)
        if not reply.content:
            raise StreamFailed("Generate answered with no content")
        tally.tokens += 1
        return time.perf_counter() - start, 1

    async def aclose(self) -> None:
        await self._channel.close()
