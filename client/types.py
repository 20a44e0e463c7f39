"""The client's value types: what callers pass in (messages) and what they get back (results, events).

    generate(...)         -> GenerateResult(text, model, provider, finish_reason, usage)
    stream_generate(...)  -> TextDelta(text), TextDelta(text), ..., StreamEnd(model, provider,
                             finish_reason, usage)
    interactive(...)      -> a session; each turn: TextDelta(text), ..., TurnResult(request_id, text,
                             model, provider, finish_reason, usage, history_trimmed)
    list_models()         -> [ModelInfo(name, aliases, provider, prices, max_output_tokens,
                             deployments, fallbacks), ...]

`client.wire` converts them to and from protobuf; `messages=` also accepts the generated Message, for
callers who already hold one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal, TypeAlias, TypedDict

from generated import ai_service_pb2 as pb

__all__ = [
    "FinishReason",
    "GenerateResult",
    "Message",
    "MessageLike",
    "ModelDeployment",
    "ModelInfo",
    "RateLimits",
    "Sampling",
    "SamplingOptions",
    "SessionMode",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "TurnEvent",
    "TurnResult",
    "Usage",
]


class FinishReason(StrEnum):
    """Why generation stopped; the values are the proto enum names without the prefix, lowercased."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    CANCELLED = "cancelled"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation. `role` is "system", "user" or "assistant"."""

    role: str
    content: str
    name: str = ""


# What `messages=` accepts: a client Message, a generated protobuf Message, or a (role, content) pair.
MessageLike: TypeAlias = Message | pb.Message | tuple[str, str]


class Sampling(TypedDict, total=False):
    """The sampling keywords every call also takes one by one; each overrides that field of `sampling=`."""

    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    stop: Sequence[str]


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How to sample a reply. None (and no stop sequences) leaves an option to the model's default.

        client.generate("hi", model="demo", sampling=SamplingOptions(temperature=0.2, max_tokens=64))
        client.generate("hi", model="demo", temperature=0.2)      # the same fields, as keywords

    `stop` holds up to 4 sequences; a lone string is one sequence. The gateway checks the ranges.
    """

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()

    @classmethod
    def of(cls, sampling: SamplingOptions | None, keywords: Sampling) -> SamplingOptions:
        """`sampling` (or the defaults) with the fields given as keywords replaced."""
        return replace(sampling or cls(), **keywords)


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens of one call, as the upstream provider reported them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # True when the upstream reported no usage: the counts are 0 because they are unknown.
    unreported: bool = False
    # True when the gateway counted some tokens itself (a cancelled turn, a resumed stream): a lower bound.
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What is left of the caller's limits after a call, from the gateway's `x-ratelimit-*` trailers (as
    OpenAI names them); None where the gateway sent none (the client has no such limit, or no limits).

    `remaining_*` is what is left after this call; `reset_*_s` the seconds until that limit is full again.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """A complete reply from `generate`."""

    text: str
    model: str
    provider: str
    finish_reason: FinishReason
    usage: Usage
    # The caller's limits after this call (None when the gateway sent no rate-limit trailers).
    rate_limits: RateLimits | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of a streamed reply."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a successful stream."""

    model: str
    provider: str
    finish_reason: FinishReason
    usage: Usage


StreamEvent: TypeAlias = TextDelta | StreamEnd

# How an InteractiveStream session treats its turns: a conversation keeps the dialogue on the server and
# answers one turn at a time; a pipeline answers independent requests concurrently.
SessionMode: TypeAlias = Literal["conversation", "pipeline"]


@dataclass(frozen=True, slots=True)
class TurnResult:
    """The end of one InteractiveStream turn, with its whole reply.

    A cancelled turn has finish_reason CANCELLED, the text received until then, and usage whose
    completion_tokens count the deltas received (`usage.estimated` is true: the gateway counted them).
    """

    request_id: str
    text: str
    model: str
    provider: str
    finish_reason: FinishReason
    usage: Usage
    # Conversation: how many of the oldest history messages the server dropped before this turn.
    history_trimmed: int = 0


TurnEvent: TypeAlias = TextDelta | TurnResult


@dataclass(frozen=True, slots=True)
class ModelDeployment:
    """One place a catalog model is served, with its share of the calls."""

    name: str
    provider: str
    upstream_model: str
    weight: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model of the gateway's catalog, as `list_models` returns it."""

    name: str
    aliases: tuple[str, ...]
    # The provider of the main (highest weight) deployment.
    provider: str
    # US dollars per million tokens; None when the gateway does not know the price.
    input_price_per_million: float | None
    output_price_per_million: float | None
    # The most tokens one reply may have, and the cap of max_tokens.
    max_output_tokens: int
    deployments: tuple[ModelDeployment, ...]
    # Tried in order when every deployment fails before the first token.
    fallbacks: tuple[str, ...]
