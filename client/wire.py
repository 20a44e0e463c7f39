"""Protobuf in and out: client arguments to requests, responses and chunks to client types.

`StreamAssembler` holds the StreamGenerate contract on the client side: deltas, then exactly one final
chunk, then nothing. Both clients feed it every chunk. `session_start`, `turn_request`, `cancel_request`
and `turn_result` are the InteractiveStream messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import TypeAlias, TypeVar

from google.protobuf import duration_pb2

from client.errors import StreamProtocolError
from client.types import (
    EmbedResult,
    EmbedTaskType,
    FinishReason,
    GenerateResult,
    Message,
    MessageLike,
    ModelDeployment,
    ModelInfo,
    RateLimits,
    ReasoningBlock,
    ReasoningDelta,
    SamplingOptions,
    SessionMode,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TokenCount,
    Tool,
    ToolCall,
    ToolCallDelta,
    TurnResult,
    Usage,
)
from generated import ai_service_pb2 as pb

__all__ = [
    "CallAssembler",
    "StreamAssembler",
    "build_request",
    "cancel_request",
    "embed_request",
    "embed_result",
    "end_user_metadata",
    "generate_result",
    "model_info",
    "rate_limits",
    "reasoning_blocks",
    "session_mode",
    "session_start",
    "token_count",
    "tool_call_delta",
    "tool_calls",
    "turn_rate_limits",
    "turn_request",
    "turn_result",
]

# A call's trailing metadata as grpc hands it over (None when there is none).
Metadata: TypeAlias = "Sequence[tuple[str, str | bytes]] | None"
RequestT = TypeVar("RequestT", pb.GenerateRequest, pb.StreamGenerateRequest, pb.CountTokensRequest)
_PREFIX = "FINISH_REASON_"


def build_request(
    request_type: type[RequestT],
    *,
    model: str,
    prompt: str | None,
    messages: Sequence[MessageLike] | None,
    system: str | None,
    sampling: SamplingOptions,
) -> RequestT:
    """The request for a conversation of `system`, then `messages`, then `prompt` as the last user turn.

    Nothing is checked here: the gateway validates and reports every problem at once.
    """
    conversation = [pb.Message(role="system", content=system)] if system is not None else []
    conversation += [_message_pb(m) for m in messages or ()]
    if prompt is not None:
        conversation.append(pb.Message(role="user", content=prompt))
    return request_type(model=model, messages=conversation, config=_config(sampling))


def _config(sampling: SamplingOptions) -> pb.GenerationConfig:
    stop = sampling.stop
    config = pb.GenerationConfig(
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        top_p=sampling.top_p,
        stop=[stop] if isinstance(stop, str) else stop,  # a lone string is one sequence, not characters
    )
    if sampling.tools or sampling.tool_choice or sampling.json_schema is not None or sampling.json_object:
        _tool_config(config, sampling)
    if sampling.reasoning_effort or sampling.reasoning_budget is not None or sampling.include_reasoning:
        effort = _EFFORTS.get(sampling.reasoning_effort or "")
        if sampling.reasoning_effort and effort is None:
            raise ValueError(f"reasoning_effort must be low, medium or high, got {sampling.reasoning_effort!r}")
        config.reasoning.CopyFrom(
            pb.ReasoningOptions(
                effort=effort or pb.REASONING_EFFORT_UNSPECIFIED,
                budget_tokens=sampling.reasoning_budget,
                include_reasoning=sampling.include_reasoning,
            )
        )
    return config


_EFFORTS = {"low": pb.REASONING_EFFORT_LOW, "medium": pb.REASONING_EFFORT_MEDIUM, "high": pb.REASONING_EFFORT_HIGH}


_CHOICES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}


def _tool_config(config: pb.GenerationConfig, sampling: SamplingOptions) -> None:
    for tool in sampling.tools:
        spec = tool if isinstance(tool, Tool) else Tool.from_dict(tool)
        parameters = json.dumps(dict(spec.parameters), separators=(",", ":")) if spec.parameters else ""
        config.tools.append(pb.Tool(name=spec.name, description=spec.description, parameters=parameters))
    choice = sampling.tool_choice
    if choice in _CHOICES:
        config.tool_choice.mode = _CHOICES[choice]
    elif choice:
        config.tool_choice.CopyFrom(pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NAMED, name=choice))
    if sampling.json_schema is not None:
        schema = dict(sampling.json_schema)
        name = str(schema.get("title") or "output")
        config.response_format.json_schema.CopyFrom(
            pb.JsonSchemaFormat(name=name, schema=json.dumps(schema, separators=(",", ":")))
        )
    elif sampling.json_object:
        config.response_format.json_object.SetInParent()


_MODES: dict[SessionMode, pb.SessionMode.ValueType] = {
    "conversation": pb.SESSION_MODE_CONVERSATION,
    "pipeline": pb.SESSION_MODE_PIPELINE,
}


def session_start(
    *,
    model: str,
    system: str | None,
    mode: SessionMode,
    max_in_flight: int,
    sampling: SamplingOptions,
) -> pb.InteractiveRequest:
    start = pb.SessionStart(
        model=model,
        config=_config(sampling),
        system_prompt=system or "",
        mode=_MODES.get(mode, pb.SESSION_MODE_UNSPECIFIED),
        max_in_flight=max_in_flight,
    )
    return pb.InteractiveRequest(start=start)


def turn_request(
    request_id: str,
    *,
    content: str | None,
    messages: Sequence[MessageLike] | None,
    model: str | None,
    sampling: SamplingOptions,
) -> pb.InteractiveRequest:
    turn = pb.TurnRequest(
        request_id=request_id,
        content=content or "",
        messages=[_message_pb(m) for m in messages or ()],
        model=model or "",
        config=_config(sampling),
    )
    return pb.InteractiveRequest(message=turn)


def cancel_request(request_id: str) -> pb.InteractiveRequest:
    return pb.InteractiveRequest(cancel=pb.CancelTurn(request_id=request_id))


def session_mode(value: pb.SessionMode.ValueType) -> SessionMode:
    return "pipeline" if value == pb.SESSION_MODE_PIPELINE else "conversation"


def turn_result(done: pb.TurnDone, text: str) -> TurnResult:
    return TurnResult(
        tool_calls=tool_calls(done.tool_calls),
        request_id=done.request_id,
        text=text,
        model=done.model,
        provider=done.provider,
        finish_reason=_finish_reason(done.finish_reason),
        usage=_usage(done.usage),
        history_trimmed=done.history_trimmed,
        rate_limits=turn_rate_limits(done.rate_limits) if done.HasField("rate_limits") else None,
        reasoning_blocks=reasoning_blocks(done.reasoning_blocks),
    )


def turn_rate_limits(limits: pb.RateLimits) -> RateLimits:
    """The RateLimits message of a TurnDone (what the x-ratelimit-* trailers of a call carry)."""
    return RateLimits(
        limit_requests=limits.limit_requests if limits.HasField("limit_requests") else None,
        remaining_requests=limits.remaining_requests if limits.HasField("remaining_requests") else None,
        reset_requests_s=_seconds(limits.reset_requests) if limits.HasField("reset_requests") else None,
        limit_tokens=limits.limit_tokens if limits.HasField("limit_tokens") else None,
        remaining_tokens=limits.remaining_tokens if limits.HasField("remaining_tokens") else None,
        reset_tokens_s=_seconds(limits.reset_tokens) if limits.HasField("reset_tokens") else None,
    )


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.ToTimedelta().total_seconds()


def _message_pb(message: MessageLike) -> pb.Message:
    if isinstance(message, pb.Message):
        return message
    if isinstance(message, Message):
        return pb.Message(
            role=message.role,
            content=message.content,
            name=message.name,
            tool_calls=[pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in message.tool_calls],
            tool_call_id=message.tool_call_id,
            cache_control=pb.CacheControl() if message.cache else None,
            reasoning_blocks=[
                pb.ReasoningBlock(
                    provider=b.provider,
                    text=b.text,
                    signature=b.signature,
                    redacted=b.redacted,
                    tool_call_id=b.tool_call_id,
                )
                for b in message.reasoning_blocks
            ],
        )
    role, content = message
    return pb.Message(role=role, content=content)


def generate_result(response: pb.GenerateResponse, trailers: Metadata = ()) -> GenerateResult:
    return GenerateResult(
        text=response.content,
        model=response.model,
        provider=response.provider,
        finish_reason=_finish_reason(response.finish_reason),
        usage=_usage(response.usage),
        tool_calls=tool_calls(response.tool_calls),
        rate_limits=rate_limits(trailers),
        reasoning=response.reasoning,
        reasoning_blocks=reasoning_blocks(response.reasoning_blocks),
    )


def embed_request(
    model: str, texts: Sequence[str], dimensions: int | None, task_type: EmbedTaskType | None
) -> pb.EmbedRequest:
    request = pb.EmbedRequest(model=model, texts=list(texts), dimensions=dimensions)
    if task_type:
        request.task_type = pb.EmbedTaskType.Value(f"EMBED_TASK_TYPE_{task_type.upper()}")
    return request


def embed_result(response: pb.EmbedResponse, trailers: Metadata = ()) -> EmbedResult:
    return EmbedResult(
        vectors=tuple(tuple(e.values) for e in sorted(response.embeddings, key=lambda e: e.index)),
        model=response.model,
        provider=response.provider,
        usage=_usage(response.usage),
        cost_usd=response.usage.cost_usd if response.usage.HasField("cost_usd") else None,
        rate_limits=rate_limits(trailers),
    )


def token_count(response: pb.CountTokensResponse) -> TokenCount:
    return TokenCount(
        response.input_tokens, response.estimated, response.model, response.provider, response.cached_tokens
    )


def reasoning_blocks(blocks: Iterable[pb.ReasoningBlock]) -> tuple[ReasoningBlock, ...]:
    return tuple(ReasoningBlock(b.provider, b.text, b.signature, b.redacted, b.tool_call_id) for b in blocks)


def tool_calls(calls: Iterable[pb.ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.name, c.arguments) for c in calls)


def tool_call_delta(piece: pb.ToolCallDelta) -> ToolCallDelta:
    return ToolCallDelta(piece.index, piece.id, piece.name, piece.arguments)


_GO_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?|(\d+)ms")


def end_user_metadata(end_user: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that names the end user a call is for (`x-end-user-id`), or none."""
    return (("x-end-user-id", end_user),) if end_user else ()


def rate_limits(trailers: Metadata) -> RateLimits | None:
    """The `x-ratelimit-*` trailers of a call, or None when it had none. A value that does not parse is
    left out (None), never an error: the reply itself is fine."""
    values = {key: value for key, value in trailers or () if key.startswith("x-ratelimit-") and isinstance(value, str)}
    if not values:
        return None
    return RateLimits(
        limit_requests=_int(values.get("x-ratelimit-limit-requests")),
        remaining_requests=_int(values.get("x-ratelimit-remaining-requests")),
        reset_requests_s=_duration(values.get("x-ratelimit-reset-requests")),
        limit_tokens=_int(values.get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(values.get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=_duration(values.get("x-ratelimit-reset-tokens")),
    )


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _duration(text: str | None) -> float | None:
    """A Go duration as OpenAI writes it (`1s`, `6m0s`, `17ms`, `1h2m3.5s`) in seconds."""
    if not text or not (match := _GO_DURATION.fullmatch(text)):
        return None
    hours, minutes, seconds, millis = match.groups()
    if millis is not None:
        return int(millis) / 1000
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def model_info(model: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        aliases=tuple(model.aliases),
        provider=model.provider,
        input_price_per_million=model.input_price_per_million if model.HasField("input_price_per_million") else None,
        output_price_per_million=(
            model.output_price_per_million if model.HasField("output_price_per_million") else None
        ),
        max_output_tokens=model.max_output_tokens,
        deployments=tuple(
            ModelDeployment(d.name, d.provider, d.upstream_model, d.weight, tuple(d.capabilities))
            for d in model.deployments
        ),
        fallbacks=tuple(model.fallbacks),
        capabilities=tuple(model.capabilities),
    )


def _usage(usage: pb.Usage) -> Usage:
    return Usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.unreported,
        usage.estimated,
        usage.cached_prompt_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        usage.cache_write_1h_tokens,
    )


def _finish_reason(value: pb.FinishReason.ValueType) -> FinishReason:
    try:
        name = pb.FinishReason.Name(value)
    except ValueError:  # a reason added to the contract after this client was built
        return FinishReason.UNSPECIFIED
    return FinishReason(name.removeprefix(_PREFIX).lower())


class StreamAssembler:
    """Turns StreamChunks into events and checks that the stream ends with exactly one final chunk."""

    def __init__(self) -> None:
        self.end: StreamEnd | None = None
        self.calls = CallAssembler()

    def event(self, chunk: pb.StreamChunk) -> StreamEvent:
        if self.end is not None:
            raise StreamProtocolError("the server sent data after the final chunk", reason="DATA_AFTER_END")
        if not chunk.is_complete:
            if chunk.delta:
                return TextDelta(chunk.delta)
            if chunk.HasField("tool_call"):
                return self.calls.add(tool_call_delta(chunk.tool_call))
            if chunk.reasoning:
                return ReasoningDelta(chunk.reasoning)
            return TextDelta(chunk.delta)
        self.end = StreamEnd(
            model=chunk.model,
            provider=chunk.provider,
            finish_reason=_finish_reason(chunk.finish_reason),
            usage=_usage(chunk.usage),
            tool_calls=self.calls.calls(),
            reasoning_blocks=reasoning_blocks(chunk.reasoning_blocks),
        )
        return self.end

    def finish(self) -> StreamEnd:
        """The final event, once the call ended with OK; raises if the server never sent it."""
        if self.end is None:
            raise StreamProtocolError("the stream ended without its final chunk", reason="MISSING_END")
        return self.end


class CallAssembler:
    """Puts a stream's tool calls together from their pieces, by index."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def add(self, piece: ToolCallDelta) -> ToolCallDelta:
        parts = self._calls.setdefault(piece.index, [piece.id, piece.name])
        parts.append(piece.arguments)
        return piece

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(p[0], p[1], "".join(p[2:])) for _, p in sorted(self._calls.items()))
