"""AIClient: the blocking client, on a grpc channel. Same options and methods as AsyncAIClient.

with AIClient(target="gateway.example.com:443", token="...") as client:
    print(client.generate("Say hello", model="demo").text)
    with client.stream_generate("Say hello", model="demo") as stream:
        for event in stream:
            ...
    with client.interactive(model="demo") as session:           # see client.sync_interactive
        print(session.send("Say hello").result().text)
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc

from client import defaults
from client.channel import DEFAULT_RETRY, ChannelOptions, ConnectionSettings
from client.errors import StreamProtocolError, error_from_rpc_error
from client.retry import Retrier, RetryPolicy, StreamRetry
from client.sync_interactive import Session, SessionRunner
from client.types import GenerateResult, MessageLike, SessionMode, StreamEnd, StreamEvent
from client.wire import StreamAssembler, build_request, generate_result
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from grpc import _CallIterator

__all__ = ["AIClient", "Stream"]


class AIClient:
    """A blocking gateway client. Options are keyword-only; see `client.channel` for the security table."""

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
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        self._stub = pb_grpc.AIServiceStub(self._channel)
        self._runner: SessionRunner | None = None  # started with the first interactive session

    def __repr__(self) -> str:
        return f"AIClient({self._settings.describe()})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def generate(
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
    ) -> GenerateResult:
        """The whole reply to `prompt` (the last user turn after `system` and `messages`)."""
        request = build_request(
            pb.GenerateRequest, model=model, prompt=prompt, messages=messages, system=system,
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, stop=stop,
        )  # fmt: skip
        retrier = Retrier(self._settings.retry, self._settings.deadline(timeout))
        while True:  # the channel retries UNAVAILABLE; this loop, RESOURCE_EXHAUSTED with RetryInfo
            try:
                response = self._stub.Generate(request, timeout=retrier.remaining())
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
                if (delay := retrier.delay(error, unavailable=False)) is None:
                    raise error from exc
                time.sleep(delay)
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
    ) -> Stream:
        """Stream the reply: TextDelta events, then one StreamEnd. Use `with` to cancel on early exit."""
        request = build_request(
            pb.StreamGenerateRequest, model=model, prompt=prompt, messages=messages, system=system,
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, stop=stop,
        )  # fmt: skip
        retrier = Retrier(self._settings.retry, self._settings.deadline(timeout))
        restart = StreamRetry(lambda left: self._stub.StreamGenerate(request, timeout=left), retrier)
        return Stream(self._stub.StreamGenerate(request, timeout=retrier.remaining()), retry=restart)

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
    ) -> Session:
        """An InteractiveStream session; open it with `with`. The options are AsyncAIClient.interactive's."""
        if self._runner is None:
            self._runner = SessionRunner(self._settings)
        open_session = functools.partial(
            self._runner.client.interactive, model=model, system=system, mode=mode, max_in_flight=max_in_flight,
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, stop=stop, timeout=timeout,
        )  # fmt: skip
        return Session(self._runner, self._runner.call(open_session))


class Stream(Iterator[StreamEvent]):
    """An iterator over one StreamGenerate call.

    Leaving a `with` block, calling `close()`, or dropping the stream cancels the call if it is still
    running. A failure raises a GatewayError after the deltas that arrived before it. `result` is the
    StreamEnd once the stream is exhausted.
    """

    def __init__(
        self, call: _CallIterator[pb.StreamChunk], *, retry: StreamRetry[_CallIterator[pb.StreamChunk]] | None = None
    ) -> None:
        self._call = call
        self._retry = retry  # until the first chunk: a failure may start the call again
        self._assembler = StreamAssembler()
        self._closed = False
        self.result: StreamEnd | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A dropped stream (`break` without a with block) cancels its call now: grpc's own finalizer
        # would wait for the cyclic garbage collector, and the upstream would keep generating meanwhile.
        if not getattr(self, "_closed", True):
            self._call.cancel()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StreamEvent:
        if self._closed:
            raise StopIteration
        while True:
            try:
                chunk = next(self._call)
                break
            except StopIteration:
                self._closed = True
                self.result = self._assembler.finish()
                raise
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
                call = self._retry.restart(error) if self._retry is not None else None
                if call is None:
                    self._closed = True
                    raise error from exc
                self._call = call
        self._retry = None  # a chunk arrived: never retried from here on
        try:
            return self._assembler.event(chunk)
        except StreamProtocolError:
            self.close()
            raise

    def close(self) -> None:
        """Cancel the call if it is still running; further iteration stops."""
        self._closed = True
        self._call.cancel()
