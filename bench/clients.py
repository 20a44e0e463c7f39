"""The two ways a bench client streams one reply, measured the same way.

    DirectClient    POST {base_url}/chat/completions on the upstream with httpx; SSE decoded with the
                    gateway's own decoder and each event JSON-parsed, as any OpenAI-compatible client must
    GatewayClient   AIService.StreamGenerate through the gateway with grpc.aio

`stream(tally)` sends one request, counts every content delta into `tally.tokens` as it arrives (so a
measurement window can cut a stream in the middle), reads the stream to its end and returns the seconds to
the first delta and the number of deltas. A failed stream raises `StreamFailed` (or the transport's error).
"""

from __future__ import annotations

import json
import time
from typing import Protocol

import grpc
import httpx

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.sse import SSEDecoder

__all__ = ["TRANSPORT_ERRORS", "DirectClient", "GatewayClient", "StreamClient", "StreamFailed", "Tally"]

PROMPT = "bench"
# A stream that stalls this long has failed: the fake upstream answers without delay.
STREAM_TIMEOUT_S = 30.0


class StreamFailed(Exception):
    """A stream ended without a whole reply."""


# What a stream may raise when the gateway or upstream misbehaves; a load process counts these as errors.
TRANSPORT_ERRORS = (StreamFailed, httpx.HTTPError, grpc.aio.AioRpcError)


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


class DirectClient:
    def __init__(self, base_url: str, model: str, *, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=STREAM_TIMEOUT_S, trust_env=False)
        # The same body the gateway sends upstream, usage included.
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        self._body = json.dumps(body, separators=(",", ":")).encode()
        self._headers = {"content-type": "application/json"}

    async def wait_ready(self) -> None:
        await self.stream(Tally())  # opens the first connection

    async def stream(self, tally: Tally) -> tuple[float, int]:
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        done = False
        async with self._client.stream(
            "POST", "/chat/completions", content=self._body, headers=self._headers
        ) as response:
            if response.status_code != 200:
                raise StreamFailed(f"upstream answered HTTP {response.status_code}")
            # Read to the end, past [DONE]: a body left unread would cost the connection its keep-alive.
            decoder = SSEDecoder()
            async for chunk in response.aiter_raw():
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
            raise StreamFailed("the upstream stream ended without [DONE]")
        return first, tokens

    async def aclose(self) -> None:
        await self._client.aclose()


class GatewayClient:
    def __init__(self, address: str, model: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._call = pb_grpc.AIServiceStub(self._channel).StreamGenerate
        self._request = pb.StreamGenerateRequest(model=model, messages=[pb.Message(role="user", content=PROMPT)])

    async def wait_ready(self) -> None:
        await self._channel.channel_ready()

    async def stream(self, tally: Tally) -> tuple[float, int]:
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        call = self._call(self._request, timeout=STREAM_TIMEOUT_S)
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
                tokens += 1
                tally.tokens += 1
        if await call.read() is not grpc.aio.EOF:
            raise StreamFailed("the gateway sent a chunk after the final one")
        return first, tokens

    async def aclose(self) -> None:
        await self._channel.close()
