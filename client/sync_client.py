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
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from client import defaults
from client.channel import DEFAULT_RETRY, HEALTH_CHECK, ChannelOptions, ConnectionSettings
from client.errors import GatewayError, StreamProtocolError
from client.retry import Retrier, RetryPolicy
from client.stream_state import StreamState
from client.sync_interactive import Session, SessionRunner
from client.types import (
    EmbedResult,
    EmbedTaskType,
    GenerateResult,
    MessageLike,
    ModelInfo,
    RateLimits,
    Sampling,
    SamplingOptions,
    SessionMode,
    StreamEnd,
    StreamEvent,
    TokenCount,
)
from client.wire import (
    build_request,
    embed_request,
    embed_result,
    end_user_metadata,
    generate_result,
    model_info,
    token_count,
)
from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from grpc import _CallIterator
    from typing_extensions import Unpack  # typing.Unpack from Python 3.12

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
        load_balancing: str | None = None,
    ) -> None:
        self._settings = ConnectionSettings.resolve(
            target=target, token=token, ca_file=ca_file, plaintext=plaintext, timeout=timeout, options=options,
            retry=retry, load_balancing=load_balancing,
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
        sampling: SamplingOptions | None = None,
        timeout: float | None = None,
        end_user: str | None = None,
        **keywords: Unpack[Sampling],
    ) -> GenerateResult:
        """The whole reply to `prompt` (the last user turn after `system` and `messages`). `sampling` and
        the keywords temperature, max_tokens, top_p and stop (which override its fields) shape the reply.
        `end_user` names who the call is for (`x-end-user-id`: an opaque id, forwarded upstream).
        `result.rate_limits` has what is left of the caller's limits."""
        request = build_request(
            pb.GenerateRequest, model=model, prompt=prompt, messages=messages, system=system,
            sampling=SamplingOptions.of(sampling, keywords),
        )  # fmt: skip
        response, trailers = self._retried(self._stub.Generate, request, timeout, end_user_metadata(end_user))
        return generate_result(response, trailers)

    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str,
        dimensions: int | None = None,
        task_type: EmbedTaskType | None = None,
        timeout: float | None = None,
        end_user: str | None = None,
    ) -> EmbedResult:
        """One vector per text, in order (`result.vectors[i]` for `texts[i]`), from a model with the
        "embeddings" capability. `dimensions` shortens the vectors where the model can; `task_type` says
        what they are for (Gemini). Retried as generate is."""
        request = embed_request(model, texts, dimensions, task_type)
        response, trailers = self._retried(self._stub.Embed, request, timeout, end_user_metadata(end_user))
        return embed_result(response, trailers)

    def count_tokens(
        self,
        prompt: str | None = None,
        *,
        model: str,
        messages: Sequence[MessageLike] | None = None,
        system: str | None = None,
        sampling: SamplingOptions | None = None,
        timeout: float | None = None,
        **keywords: Unpack[Sampling],
    ) -> TokenCount:
        """The input tokens that generate with the same arguments would send: counted by the provider
        (Anthropic, Gemini) or the gateway's estimate (`estimated`). Retried like list_models."""
        request = build_request(
            pb.CountTokensRequest, model=model, prompt=prompt, messages=messages, system=system,
            sampling=SamplingOptions.of(sampling, keywords),
        )  # fmt: skip
        response, _ = self._retried(self._stub.CountTokens, request, timeout, (), unavailable=True)
        return token_count(response)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The gateway's grpc.health.v1 status for `service` ("" for the whole server): "SERVING", or
        "NOT_SERVING" while it drains. Not retried: a health check reports what it finds."""
        check = self._channel.unary_unary(
            HEALTH_CHECK, HealthCheckRequest.SerializeToString, HealthCheckResponse.FromString
        )
        try:
            response = check(HealthCheckRequest(service=service), timeout=self._settings.deadline(timeout))
        except grpc.RpcError as exc:
            raise self._settings.error(exc) from exc
        return HealthCheckResponse.ServingStatus.Name(response.status)

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The gateway's catalog, sorted by name: every model a call may name, with its aliases, prices,
        deployments and fallbacks. Retried like a stream before its first chunk (it costs nothing)."""
        response, _ = self._retried(self._stub.ListModels, pb.ListModelsRequest(), timeout, (), unavailable=True)
        return [model_info(model) for model in response.models]

    def _retried(
        self,
        method: Any,
        request: Any,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
        *,
        unavailable: bool = False,
    ) -> tuple[Any, tuple[tuple[str, str | bytes], ...]]:
        """A unary call and its trailers, retried by the client's policy: RESOURCE_EXHAUSTED with RetryInfo,
        and UNAVAILABLE too when `unavailable` (the channel already retries it for the others)."""
        retrier = Retrier(self._settings.retry, self._settings.deadline(timeout))
        while True:
            try:
                response, call = method.with_call(request, timeout=retrier.remaining(), metadata=metadata)
            except grpc.RpcError as exc:
                error = self._settings.error(exc)
                if (delay := retrier.delay(error, unavailable=unavailable)) is None:
                    raise error from exc
                time.sleep(delay)
            else:
                return response, tuple(call.trailing_metadata() or ())

    def stream_generate(
        self,
        prompt: str | None = None,
        *,
        model: str,
        messages: Sequence[MessageLike] | None = None,
        system: str | None = None,
        sampling: SamplingOptions | None = None,
        timeout: float | None = None,
        end_user: str | None = None,
        **keywords: Unpack[Sampling],
    ) -> Stream:
        """Stream the reply: TextDelta events, then one StreamEnd. Use `with` to cancel on early exit. The
        options are generate's; `rate_limits` is set once the stream has ended."""
        request = build_request(
            pb.StreamGenerateRequest, model=model, prompt=prompt, messages=messages, system=system,
            sampling=SamplingOptions.of(sampling, keywords),
        )  # fmt: skip
        state = StreamState(Retrier(self._settings.retry, self._settings.deadline(timeout)), self._settings.error)
        metadata = end_user_metadata(end_user)
        return Stream(lambda left: self._stub.StreamGenerate(request, timeout=left, metadata=metadata), state)

    def interactive(
        self,
        *,
        model: str,
        system: str | None = None,
        mode: SessionMode = "conversation",
        max_in_flight: int = 0,
        sampling: SamplingOptions | None = None,
        timeout: float | None = None,
        **keywords: Unpack[Sampling],
    ) -> Session:
        """An InteractiveStream session; open it with `with`. The options are AsyncAIClient.interactive's."""
        if self._runner is None:
            self._runner = SessionRunner(self._settings)
        open_session = functools.partial(
            self._runner.client.interactive, model=model, system=system, mode=mode, max_in_flight=max_in_flight,
            sampling=SamplingOptions.of(sampling, keywords), timeout=timeout,
        )  # fmt: skip
        return Session(self._runner, self._runner.call(open_session))


class Stream(Iterator[StreamEvent]):
    """An iterator over one StreamGenerate call.

    Leaving a `with` block, calling `close()`, or dropping the stream cancels the call if it is still
    running. A failure raises a GatewayError after the deltas that arrived before it. `result` is the
    StreamEnd once the stream is exhausted.
    """

    def __init__(self, start: Callable[[float], _CallIterator[pb.StreamChunk]], state: StreamState) -> None:
        self._start = start  # called again to retry a call that failed before its first chunk
        self._state = state
        self._call = start(state.remaining())

    @property
    def result(self) -> StreamEnd | None:
        return self._state.result

    @property
    def rate_limits(self) -> RateLimits | None:
        """What is left of the caller's limits (the call's x-ratelimit-* trailers), once the stream ended."""
        return self._state.rate_limits

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A dropped stream (`break` without a with block) cancels its call now: grpc's own finalizer
        # would wait for the cyclic garbage collector, and the upstream would keep generating meanwhile.
        if hasattr(self, "_call") and not self._state.closed:
            self._call.cancel()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StreamEvent:
        while not self._state.closed:
            try:
                chunk = next(self._call)
            except StopIteration:
                self._state.end(self._call.trailing_metadata())
                break
            except grpc.RpcError as exc:
                step = self._state.failed(exc)
                if isinstance(step, GatewayError):
                    raise step from exc
                time.sleep(step)
                self._call = self._start(self._state.remaining())
                continue
            try:
                return self._state.chunk(chunk)
            except StreamProtocolError:
                self._call.cancel()
                raise
        raise StopIteration

    def close(self) -> None:
        """Cancel the call if it is still running; further iteration stops."""
        self._state.closed = True
        self._call.cancel()
