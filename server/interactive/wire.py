"""InteractiveStream messages: checked session options and turns from protobuf, responses to protobuf.

Checks reuse `check_request`, so a turn is judged as a Generate call with the same model, messages and
config would be, and every violation names a field of the SessionStart or TurnRequest it is about.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import duration_pb2

from generated import ai_service_pb2 as pb
from server.convert import (
    FINISH_REASON_PB,
    params_from_pb,
    reasoning_blocks_pb,
    tool_call_delta_pb,
    tool_calls_pb,
    unchecked_messages,
    unserved_needs,
    usage_pb,
)
from server.errors import FieldViolation, GatewayError, InvalidRequest, ModelNotFound, echo, to_rpc_status
from server.interactive.history import message_bytes
from server.policy.headers import RateLimitsLeft
from server.routing.catalog import ModelConfig
from server.types import ChatMessage, Finish, FinishReason, SamplingParams, ToolCall, ToolCallDelta
from server.validation import UncheckedMessage, check_request

__all__ = [
    "ModelCatalog",
    "SessionOptions",
    "TurnSpec",
    "cancelled",
    "delta",
    "done",
    "go_away",
    "merged_params",
    "rate_limits_pb",
    "session_options",
    "started",
    "tool_call_delta",
    "turn_error",
    "turn_spec",
]

_MODES = (pb.SESSION_MODE_UNSPECIFIED, pb.SESSION_MODE_CONVERSATION, pb.SESSION_MODE_PIPELINE)


class ModelCatalog(Protocol):
    """What the checks need of the router."""

    @property
    def known_names(self) -> Sequence[str]: ...

    def resolve(self, name: str) -> ModelConfig | None: ...


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """A checked SessionStart: the defaults of every turn and the session's limits."""

    model: ModelConfig
    params: SamplingParams
    system: tuple[ChatMessage, ...]  # the system prompt, or nothing
    pipeline: bool
    max_in_flight: int
    needs: frozenset[str] = frozenset()  # what the session's config asks beyond its params (reasoning)

    @property
    def mode(self) -> pb.SessionMode.ValueType:
        return pb.SESSION_MODE_PIPELINE if self.pipeline else pb.SESSION_MODE_CONVERSATION


@dataclass(frozen=True, slots=True)
class TurnSpec:
    """A checked TurnRequest: the turn's own messages (a conversation adds its history before them)."""

    request_id: str
    model: ModelConfig
    params: SamplingParams
    messages: tuple[ChatMessage, ...]
    needs: frozenset[str] = frozenset()


def session_options(
    start: pb.SessionStart, *, catalog: ModelCatalog, max_in_flight: int, max_request_bytes: int
) -> SessionOptions:
    """Check `start`; raises InvalidRequest (or ModelNotFound) listing every problem."""
    extra = []
    if start.mode not in _MODES:
        extra.append(FieldViolation("mode", f"unknown session mode {start.mode}"))
    if start.max_in_flight < 0:
        extra.append(
            FieldViolation("max_in_flight", f"must be at least 0 (0: the server's default), got {start.max_in_flight}")
        )
    params = params_from_pb(start.config)
    system = [UncheckedMessage("system", start.system_prompt)]
    model, checked = _check(
        catalog, start.model, system, params, max_request_bytes, extra, renamed={"messages": "system_prompt"}
    )
    pipeline = start.mode == pb.SESSION_MODE_PIPELINE
    limit = min(start.max_in_flight or max_in_flight, max_in_flight) if pipeline else 1
    needs = unserved_needs((), start.config)
    return SessionOptions(model, params, checked if start.system_prompt else (), pipeline, limit, needs)


def turn_spec(
    turn: pb.TurnRequest, options: SessionOptions, *, catalog: ModelCatalog, max_request_bytes: int
) -> TurnSpec:
    """Check `turn` with the session's defaults; raises InvalidRequest (or ModelNotFound)."""
    messages = unchecked_messages(turn.messages)
    if turn.content:
        messages.append(UncheckedMessage("user", turn.content))
    budget = max_request_bytes - sum(map(message_bytes, options.system))
    # An empty turn is reported against `content`, the field a client most often means to fill.
    renamed = {} if messages else {"messages": "content"}
    params = merged_params(options.params, turn.config)
    model, checked = _check(catalog, turn.model or options.model.name, messages, params, budget, [], renamed)
    needs = options.needs | unserved_needs(turn.messages, turn.config)
    return TurnSpec(turn.request_id, model, params, checked, needs)


def merged_params(session: SamplingParams, turn: pb.GenerationConfig) -> SamplingParams:
    """The session's sampling options with those the turn sets replacing them."""
    own = params_from_pb(turn)
    return SamplingParams(
        temperature=session.temperature if own.temperature is None else own.temperature,
        max_tokens=session.max_tokens if own.max_tokens is None else own.max_tokens,
        top_p=session.top_p if own.top_p is None else own.top_p,
        stop=own.stop or session.stop,
        tools=own.tools or session.tools,
        tool_choice=session.tool_choice if own.tool_choice is None else own.tool_choice,
        response_format=session.response_format if own.response_format is None else own.response_format,
        reasoning=session.reasoning if own.reasoning is None else own.reasoning,
    )


def _check(
    catalog: ModelCatalog,
    model_name: str,
    messages: Sequence[UncheckedMessage],
    params: SamplingParams,
    max_content_bytes: int,
    extra: list[FieldViolation],
    renamed: Mapping[str, str],
) -> tuple[ModelConfig, tuple[ChatMessage, ...]]:
    model = catalog.resolve(model_name)
    try:
        checked = check_request(
            model=model_name,
            known_models=catalog.known_names,
            model_max_tokens=model.max_tokens if model else None,
            messages=messages,
            params=params,
            max_content_bytes=max_content_bytes,
        )
    except ModelNotFound:
        if extra:
            raise InvalidRequest([FieldViolation("model", f"unknown model {echo(model_name)}"), *extra]) from None
        raise
    except InvalidRequest as error:
        violations = [FieldViolation(renamed.get(v.field, v.field), v.description) for v in error.violations]
        raise InvalidRequest([*violations, *extra]) from None
    if extra:
        raise InvalidRequest(extra)
    assert model is not None  # check_request raised ModelNotFound otherwise
    return model, checked


# --- responses -----------------------------------------------------------------------------------------


def started(session_id: str, options: SessionOptions) -> pb.InteractiveResponse:
    return pb.InteractiveResponse(
        started=pb.SessionStarted(
            session_id=session_id, model=options.model.name, mode=options.mode, max_in_flight=options.max_in_flight
        )
    )


def delta(request_id: str, text: str) -> pb.InteractiveResponse:
    return pb.InteractiveResponse(delta=pb.TurnDelta(request_id=request_id, text=text))


def reasoning_delta(request_id: str, text: str) -> pb.InteractiveResponse:
    return pb.InteractiveResponse(delta=pb.TurnDelta(request_id=request_id, reasoning=text))


def tool_call_delta(request_id: str, piece: ToolCallDelta) -> pb.InteractiveResponse:
    return pb.InteractiveResponse(delta=pb.TurnDelta(request_id=request_id, tool_call=tool_call_delta_pb(piece)))


def done(
    request_id: str,
    finish: Finish,
    history_trimmed: int,
    tool_calls: tuple[ToolCall, ...] = (),
    rate_limits: RateLimitsLeft | None = None,
) -> pb.InteractiveResponse:
    served = finish.served
    return pb.InteractiveResponse(
        done=pb.TurnDone(
            request_id=request_id,
            finish_reason=FINISH_REASON_PB[finish.reason],
            usage=usage_pb(finish.usage, finish.cost_usd),
            model=served.model if served else "",
            provider=served.provider if served else "",
            history_trimmed=history_trimmed,
            deployment=served.deployment if served else "",
            tool_calls=tool_calls_pb(tool_calls),
            rate_limits=rate_limits_pb(rate_limits),
            reasoning_blocks=reasoning_blocks_pb(finish.reasoning_blocks),
        )
    )


def cancelled(
    request_id: str, model: str, deltas: int, history_trimmed: int, rate_limits: RateLimitsLeft | None = None
) -> pb.InteractiveResponse:
    """The end of a cancelled turn. The upstream never reported usage, so the completion tokens are the
    deltas received (one per token for the usual upstreams), the prompt tokens are unknown (0), and
    `estimated` says that these counts are the gateway's, not the upstream's."""
    usage = pb.Usage(completion_tokens=deltas, total_tokens=deltas, estimated=True)
    return pb.InteractiveResponse(
        done=pb.TurnDone(
            request_id=request_id,
            finish_reason=FINISH_REASON_PB[FinishReason.CANCELLED],
            usage=usage,
            model=model,
            history_trimmed=history_trimmed,
            rate_limits=rate_limits_pb(rate_limits),
        )
    )


def turn_error(
    request_id: str, error: GatewayError, rate_limits: RateLimitsLeft | None = None
) -> pb.InteractiveResponse:
    return pb.InteractiveResponse(
        error=pb.TurnError(request_id=request_id, status=to_rpc_status(error), rate_limits=rate_limits_pb(rate_limits))
    )


def rate_limits_pb(left: RateLimitsLeft | None) -> pb.RateLimits | None:
    """What is left of the client's limits as a turn carries it (None, the field unset, without limits)."""
    if left is None:
        return None
    out = pb.RateLimits()
    if left.requests is not None:
        out.limit_requests = left.requests.limit
        out.remaining_requests = left.requests.remaining
        out.reset_requests.FromMilliseconds(math.ceil(left.requests.reset_s * 1000 - 1e-6))
    if left.tokens is not None:
        out.limit_tokens = left.tokens.limit
        out.remaining_tokens = left.tokens.remaining
        out.reset_tokens.FromMilliseconds(math.ceil(left.tokens.reset_s * 1000 - 1e-6))
    return out


def go_away(time_left_s: float) -> pb.InteractiveResponse:
    time_left = duration_pb2.Duration()
    time_left.FromMilliseconds(round(time_left_s * 1000))
    return pb.InteractiveResponse(go_away=pb.GoAway(time_left=time_left))
