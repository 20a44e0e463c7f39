"""AsyncAIClient: the asyncio client, on a grpc.aio channel. Same options and methods as AIClient.

async with AsyncAIClient(target="gateway.example.com:443", token="...") as client:
    print((await client.generate("Say hello", model="demo")).text)
    async with client.stream_generate("Say hello", model="demo") as stream:
        async for event in stream:
            ...
    async with client.interactive(model="demo") as session:     # see client.interactive
        print((await session.send("Say hello")).text)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

import grpc

from client import defaults
from client.channel import DEFAULT_RETRY, ChannelOptions, ConnectionSettings
from client.errors import StreamProtocolError, error_from_rpc_error
from client.interactive import AsyncSession
from client.retry import AsyncStreamRetry, Retrier, RetryPolicy
from client.types import GenerateResult, MessageLike, SessionMode, StreamEnd, StreamEvent
from client.wire import StreamAssembler, build_request, generate_result, session_start
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc

__all__ = ["AsyncAIClient", "AsyncStream"]


class AsyncAIClient:
    """An asyncio gateway client. Options are keyword-only; see `client.channel` for the security table.

    Create it inside the event loop that uses it (grpc.aio binds a channel to its loop).
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        plaintext: bool = False,
        timeout: float = defaults.DEFAULT_TIMEOUT_S,
        options: ChannelOptions | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
    ) -> None:
        self._settings = ConnectionSettings.resolve(
            target=target, token=token, ca_file=ca_file, plaintext=plaintext, timeout=timeout, options=options,
            retry=retry,
        )  # fmt: skip
        credentials = self._settings.credentials()
        target, channel_options = self._settings.target, self._settings.options
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
        self._stub = pb_grpc.AIServiceStub(self._channel)

    def __repr__(self) -> str:
        return f"AsyncAIClient({self._settings.describe()})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(
        self,
        prompt: str | None = None,
        *,
        model: str,
        messages: Sequence[MessageLike] | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        timeout: float | None = None,  # noqa: ASYNC109  (the call's gRPC deadline, sent to the server)
    ) -> GenerateResult:
        """The whole reply to `prompt` (the last user turn after `system` and `messages`)."""
        request = build_request(
            pb.GenerateRequest, model=model, prompt=prompt, messages=messages, system=system,
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, stop=stop,
        )  # fmt: skip
        retrier = Retrier(self._settings.retry, self._settings.deadline(timeout))
        while True:  # the channel retries UNAVAILABLE; this loop, RESOURCE_EXHAUSTED with RetryInfo
            try:
                response = await self._stub.Generate(request, timeout=retrier.remaining())
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc_error(exc)
                if (delay := retrier.delay(error, unavailable=False)) is None:
                    raise error from exc
                await asyncio.sleep(delay)
            else:
                return generate_result(response)

    def stream_generate(
        self,
        prompt: str | None = None,
        *,
        model: str,
        messages: Sequence[MessageLike] | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        timeout: float | None = None,
    ) -> AsyncStream:
        """Stream the reply: TextDelta events, then one StreamEnd. Use `async with` to cancel on early exit."""
        request = build_request(
            pb.StreamGenerateRequest, model=model, prompt=prompt, messages=messages, system=system,
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, stop=stop,
        )  # fmt: skip
        retrier = Retrier(self._settings.retry, self._settings.deadline(timeout))
        restart = AsyncStreamRetry(lambda left: self._stub.StreamGenerate(request, timeout=left), retrier)
        return AsyncStream(self._stub.StreamGenerate(request, timeout=retrier.remaining()), retry=restart)

    def interactive(
        self,
        *,
        model: str,
        system: str | None = None,
        mode: SessionMode = "conversation",
        max_in_flight: int = 0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        timeout: float | None = None,
    ) -> AsyncSession:
        """An InteractiveStream session; open it with `async with`. `model`, `system` and the sampling
        options are the defaults of every turn; `max_in_flight` (pipeline; 0: the server's default) is
        capped by the server. A session has no deadline unless `timeout` (seconds, the whole session)."""
        start = session_start(
            model=model, system=system, mode=mode, max_in_flight=max_in_flight,
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, stop=stop,
        )  # fmt: skip
        return AsyncSession(self._stub, start, timeout=timeout)


class AsyncStream(AsyncIterator[StreamEvent]):
    """An async iterator over one StreamGenerate call.

    Leaving an `async with` block, calling `aclose()`, or dropping the stream cancels the call if it is
    still running. A failure raises a GatewayError after the deltas that arrived before it. `result` is
    the StreamEnd once the stream is exhausted.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[pb.StreamGenerateRequest, pb.StreamChunk],
        *,
        retry: AsyncStreamRetry[grpc.aio.UnaryStreamCall[pb.StreamGenerateRequest, pb.StreamChunk]] | None = None,
    ) -> None:
        self._call = call
        self._retry = retry  # until the first chunk: a failure may start the call again
        self._assembler = StreamAssembler()
        self._closed = False
        self.result: StreamEnd | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A dropped stream (`break` without a with block) cancels its call now: grpc's own finalizer
        # would wait for the cyclic garbage collector, and the upstream would keep generating meanwhile.
        if not getattr(self, "_closed", True):
            self._call.cancel()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._closed:
            raise StopAsyncIteration
        while True:
            try:
                chunk = await self._call.read()
                break
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc_error(exc)
                call = await self._retry.restart(error) if self._retry is not None else None
                if call is None:
                    self._closed = True
                    raise error from exc
                self._call = call
        self._retry = None  # a chunk arrived (or the call ended): never retried from here on
        if not isinstance(chunk, pb.StreamChunk):  # grpc.aio.EOF: the call ended with OK
            self._closed = True
            self.result = self._assembler.finish()
            raise StopAsyncIteration
        try:
            return self._assembler.event(chunk)
        except StreamProtocolError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Cancel the call if it is still running; further iteration stops."""
        self._closed = True
        self._call.cancel()
