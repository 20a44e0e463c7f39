"""AIClient: the blocking client, on a grpc channel. Same options and methods as AsyncAIClient.

with AIClient(target="gateway.example.com:443", token="...") as client:
    print(client.generate("Say hello", model="demo").text)
    with client.stream_generate("Say hello", model="demo") as stream:
        for event in stream:
            ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc

from client import defaults
from client.channel import ChannelOptions, ConnectionSettings
from client.errors import StreamProtocolError, error_from_rpc_error
from client.types import GenerateResult, MessageLike, StreamEnd, StreamEvent
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
    ) -> None:
        self._settings = ConnectionSettings.resolve(
            target=target, token=token, ca_file=ca_file, plaintext=plaintext, timeout=timeout, options=options
        )
        credentials = self._settings.credentials()
        target, channel_options = self._settings.target, self._settings.options
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        self._stub = pb_grpc.AIServiceStub(self._channel)

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
        try:
            response = self._stub.Generate(request, timeout=self._settings.deadline(timeout))
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from exc
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
        return Stream(self._stub.StreamGenerate(request, timeout=self._settings.deadline(timeout)))


class Stream(Iterator[StreamEvent]):
    """An iterator over one StreamGenerate call.

    Leaving a `with` block, calling `close()`, or dropping the stream cancels the call if it is still
    running. A failure raises a GatewayError after the deltas that arrived before it. `result` is the
    StreamEnd once the stream is exhausted.
    """

    def __init__(self, call: _CallIterator[pb.StreamChunk]) -> None:
        self._call = call
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
        try:
            chunk = next(self._call)
        except StopIteration:
            self._closed = True
            self.result = self._assembler.finish()
            raise
        except grpc.RpcError as exc:
            self._closed = True
            raise error_from_rpc_error(exc) from exc
        try:
            return self._assembler.event(chunk)
        except StreamProtocolError:
            self.close()
            raise

    def close(self) -> None:
        """Cancel the call if it is still running; further iteration stops."""
        self._closed = True
        self._call.cancel()
