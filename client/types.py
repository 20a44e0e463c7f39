"""The client's value types: what callers pass in (messages) and what they get back (results, events).

    generate(...)         -> GenerateResult(text, model, provider, finish_reason, usage, tool_calls)
    stream_generate(...)  -> TextDelta(text) and ToolCallDelta(index, id, name, arguments) events, ...,
                             StreamEnd(model, provider, finish_reason, usage, tool_calls)
    interactive(...)      -> a session; each turn: TextDelta(text), ..., TurnResult(request_id, text,
                             model, provider, finish_reason, usage, history_trimmed)
    list_models()         -> [ModelInfo(name, aliases, provider, prices, max_output_tokens,
                             deployments, fallbacks), ...]

`client.wire` converts them to and from protobuf; `messages=` also accepts the generated Message, for
callers who already hold one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, TypeAlias, TypedDict

from generated import ai_service_pb2 as pb

__all__ = [
    "EmbedResult",
    "EmbedTaskType",
    "FinishReason",
    "GenerateResult",
    "Message",
    "MessageLike",
    "ModelDeployment",
    "ModelInfo",
    "RateLimits",
    "ReasoningBlock",
    "Sampling",
    "SamplingOptions",
    "SessionMode",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "TokenCount",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
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
class ToolCall:
    """A tool call the model made: `arguments` is JSON text (`args` parses it)."""

    id: str
    name: str
    arguments: str

    @property
    def args(self) -> Any:
        """The arguments, parsed (models may write JSON that does not match the tool's schema: check it)."""
        return json.loads(self.arguments) if self.arguments else {}


@dataclass(frozen=True, slots=True)
class ReasoningBlock:
    """A signed piece of the model's reasoning (Anthropic's thinking blocks, Gemini's thought signatures),
    opaque: send it back unchanged in the assistant message of the next request (Message.calling does),
    or the provider may refuse a tool-call round trip. `provider` made it; no other provider gets it."""

    provider: str
    text: str = ""
    signature: str = ""
    redacted: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation. `role` is "system", "user", "assistant" or "tool"; an assistant message
    may carry the `tool_calls` it made, a tool message answers the call `tool_call_id`.

        history.append(Message.calling(result.tool_calls, reasoning_blocks=result.reasoning_blocks))
        history.append(Message.tool_result(call, "sunny"))         # one answer per call

    `cache=True` marks a prompt-cache breakpoint (README: Prompt caching).
    """

    role: str
    content: str
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    # A prompt-cache breakpoint: the provider may cache the conversation up to and including this message.
    cache: bool = False
    # Assistant messages: the signed reasoning blocks of the reply, as the result returned them.
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()

    @classmethod
    def calling(
        cls, tool_calls: Sequence[ToolCall], text: str = "", reasoning_blocks: Sequence[ReasoningBlock] = ()
    ) -> Message:
        """The assistant's turn that made `tool_calls` (with the text it wrote before them, and the signed
        reasoning blocks of its result, which thinking models need back)."""
        return cls("assistant", text, tool_calls=tuple(tool_calls), reasoning_blocks=tuple(reasoning_blocks))

    @classmethod
    def tool_result(cls, call: ToolCall, result: str | Mapping[str, Any]) -> Message:
        """The answer to `call`: text, or a dict sent as JSON."""
        content = result if isinstance(result, str) else json.dumps(result, separators=(",", ":"))
        return cls("tool", content, tool_call_id=call.id)


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call: a name, what it does, and its arguments as a JSON Schema (a dict).

    weather = Tool.from_dict({"name": "get_weather", "description": "The weather in a city",
                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}})
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Tool:
        """A tool from a plain dict: {"name", "description", "parameters"}, or OpenAI's
        {"type": "function", "function": {...}}."""
        if spec.get("type") == "function" and isinstance(spec.get("function"), Mapping):
            spec = spec["function"]
        return cls(str(spec["name"]), str(spec.get("description") or ""), dict(spec.get("parameters") or {}))


# What `messages=` accepts: a client Message, a generated protobuf Message, or a (role, content) pair.
MessageLike: TypeAlias = Message | pb.Message | tuple[str, str]


class Sampling(TypedDict, total=False):
    """The sampling keywords every call also takes one by one; each overrides that field of `sampling=`."""

    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    stop: Sequence[str]
    tools: Sequence[Tool | Mapping[str, Any]]
    tool_choice: str | None
    json_schema: Mapping[str, Any] | None
    json_object: bool
    reasoning_effort: str | None
    reasoning_budget: int | None
    include_reasoning: bool


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How to sample a reply. None (and no stop sequences) leaves an option to the model's default.

        client.generate("hi", model="demo", sampling=SamplingOptions(temperature=0.2, max_tokens=64))
        client.generate("hi", model="demo", temperature=0.2)      # the same fields, as keywords

    `stop` holds up to 4 sequences; a lone string is one sequence. The gateway checks the ranges.

    Beyond sampling: `tools` (Tool, or dicts as Tool.from_dict takes them), `tool_choice` ("auto",
    "none", "required", or a tool's name), and the reply's shape: `json_schema` (a JSON Schema dict; its
    "title" names it, else "output") or `json_object=True`. Reasoning models: `reasoning_effort` ("low",
    "medium", "high"), `reasoning_budget` (thinking tokens) and `include_reasoning=True` to receive the
    model's reasoning text (ReasoningDelta events; GenerateResult.reasoning).
    """

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    tools: Sequence[Tool | Mapping[str, Any]] = ()
    tool_choice: str | None = None
    json_schema: Mapping[str, Any] | None = None
    json_object: bool = False
    reasoning_effort: str | None = None
    reasoning_budget: int | None = None
    include_reasoning: bool = False

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
    # Of prompt_tokens, those read from / written to the provider's prompt cache (priced apart).
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    # Of completion_tokens, those the model spent reasoning (0 when none or not reported).
    reasoning_tokens: int = 0
    # Of cache_write_tokens, those written with a 1-hour TTL (priced apart).
    cache_write_1h_tokens: int = 0


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
    # The tools the model called (finish_reason TOOL_CALLS): run them, answer with Message.tool_result.
    tool_calls: tuple[ToolCall, ...] = ()
    # The caller's limits after this call (None when the gateway sent no rate-limit trailers).
    rate_limits: RateLimits | None = None
    # The model's reasoning text, when asked for with include_reasoning and the provider shares it.
    reasoning: str = ""
    # The model's signed reasoning: send it back with the tool calls (Message.calling).
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()


# What embeddings are for (Gemini's taskType; other providers ignore it).
EmbedTaskType: TypeAlias = Literal[
    "retrieval_query", "retrieval_document", "semantic_similarity", "classification", "clustering"
]


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """The vectors from `embed`: `vectors[i]` is the vector of the i-th text."""

    vectors: tuple[tuple[float, ...], ...]
    model: str
    provider: str
    usage: Usage  # prompt_tokens are the input; `estimated` when the provider reported none (Gemini)
    cost_usd: float | None = None  # None when the model's price is unknown
    rate_limits: RateLimits | None = None


@dataclass(frozen=True, slots=True)
class TokenCount:
    """The input tokens of a request, from `count_tokens`."""

    input_tokens: int
    # True when the gateway estimated (a quarter of the characters): the provider has no count endpoint.
    estimated: bool
    model: str
    provider: str
    cached_tokens: int = 0  # of input_tokens, those in the provider's cached content (Gemini)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of a streamed reply."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """The next piece of the model's reasoning text (asked for with include_reasoning), apart from the reply."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the call's `index`; `id` and `name` on its first piece; a fragment
    of its `arguments`. The StreamEnd holds the calls whole."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a successful stream."""

    model: str
    provider: str
    finish_reason: FinishReason
    usage: Usage
    # The tool calls of the reply, put together from its ToolCallDelta pieces.
    tool_calls: tuple[ToolCall, ...] = ()
    # The model's signed reasoning: send it back with the tool calls (Message.calling).
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()


StreamEvent: TypeAlias = TextDelta | ToolCallDelta | ReasoningDelta | StreamEnd

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
    # The tools the model called; a conversation keeps them: answer with tool messages in the next turn.
    tool_calls: tuple[ToolCall, ...] = ()
    # The caller's limits after this turn was admitted (None when the caller has no rate limits).
    rate_limits: RateLimits | None = None
    # The model's signed reasoning (a conversation keeps it and sends it back by itself; a pipeline's
    # caller sends it back with the tool calls).
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()


TurnEvent: TypeAlias = TextDelta | ToolCallDelta | ReasoningDelta | TurnResult


@dataclass(frozen=True, slots=True)
class ModelDeployment:
    """One place a catalog model is served, with its share of the calls."""

    name: str
    provider: str
    upstream_model: str
    weight: float
    capabilities: tuple[str, ...] = ()


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
    # What it can do: "tools", "json_object", "json_schema".
    capabilities: tuple[str, ...] = ()
