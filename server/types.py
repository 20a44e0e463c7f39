"""Provider-neutral request, stream events and results: the language every layer of the server speaks.

A provider adapter turns a `ChatRequest` into its wire format and its answer into either a stream of
events (`TextDelta`s, `ToolCallDelta`s and `ReasoningDelta`s, then exactly one `Finish`) or one
`Completion`. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "Finish",
    "FinishReason",
    "Image",
    "OutputFormat",
    "Reasoning",
    "ReasoningBlock",
    "ReasoningDelta",
    "ReasoningEffort",
    "ResponseFormat",
    "Role",
    "SamplingParams",
    "Served",
    "StreamEvent",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolMode",
    "Usage",
]


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.Enum):
    """Why generation stopped, in one vocabulary for every provider."""

    UNSPECIFIED = 0
    STOP = 1
    LENGTH = 2
    CONTENT_FILTER = 3
    CANCELLED = 4
    TOOL_CALLS = 5


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool by the model; `arguments` is JSON text, as the model wrote it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image of a user message: by `url` (https, or a data: URL), or inline `data` with its `mime_type`."""

    url: str = ""
    data: bytes = b""
    mime_type: str = ""


@dataclass(frozen=True, slots=True)
class ReasoningBlock:
    """One signed piece of a model's reasoning, to be sent back unchanged, and only to `provider` (the
    provider's configured name) that made it: an Anthropic thinking block (`text` and `signature`) or
    redacted_thinking block (`redacted`), or a Gemini thought signature (`signature`, on the functionCall
    part of `tool_call_id`, else on the reply's text)."""

    provider: str
    text: str = ""
    signature: str = ""
    redacted: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message. An assistant message may carry `tool_calls`; a TOOL message answers `tool_call_id`."""

    role: Role
    content: str
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    # A cache breakpoint: the provider may cache the prompt up to and including this message.
    cache: bool = False
    # Images, after the message's text (user messages only).
    images: tuple[Image, ...] = ()
    # The breakpoint's TTL in seconds (300 or 3600); 0: the provider's default.
    cache_ttl_s: int = 0
    # Assistant messages: the model's signed reasoning blocks, sent back to the provider that made them.
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call. `parameters` is its JSON Schema as JSON text ("": no arguments);
    tool_checks.schema_of parses a checked one."""

    name: str
    description: str
    parameters: str


class ToolMode(enum.Enum):
    AUTO = 1
    NONE = 2
    REQUIRED = 3
    NAMED = 4


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolMode = ToolMode.AUTO
    name: str = ""  # ToolMode.NAMED only


class OutputFormat(enum.Enum):
    TEXT = 1
    JSON_OBJECT = 2
    JSON_SCHEMA = 3


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The shape of the reply's text. `schema` (JSON text) and `name` are for JSON_SCHEMA only."""

    kind: OutputFormat = OutputFormat.TEXT
    name: str = ""
    schema: str = ""
    strict: bool = False
    description: str = ""


class ReasoningEffort(enum.Enum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3


# A thinking budget for each effort, for providers that take a budget (Anthropic's minimum is 1024;
# Gemini 2.5 Flash takes up to 24576).
_BUDGETS = {ReasoningEffort.LOW: 1024, ReasoningEffort.MEDIUM: 8192, ReasoningEffort.HIGH: 24576}


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A reasoning model's thinking: an `effort`, a `budget_tokens` (None: not set), and whether its
    reasoning text is relayed (`include`)."""

    effort: ReasoningEffort | None = None
    budget_tokens: int | None = None
    include: bool = False

    def budget(self) -> int | None:
        """The thinking budget: the client's, else the effort's; None when neither is set."""
        if self.budget_tokens is not None:
            return self.budget_tokens
        return _BUDGETS[self.effort] if self.effort is not None else None

    def level(self) -> ReasoningEffort | None:
        """The effort: the client's, else the nearest to its budget; None when neither is set."""
        if self.effort is not None or self.budget_tokens is None:
            return self.effort
        if self.budget_tokens <= _BUDGETS[ReasoningEffort.LOW]:
            return ReasoningEffort.LOW
        return (
            ReasoningEffort.MEDIUM if self.budget_tokens <= _BUDGETS[ReasoningEffort.MEDIUM] else ReasoningEffort.HIGH
        )


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling options; None means "not set by the client", so the provider's default applies."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None  # None: not set (auto when there are tools)
    response_format: ResponseFormat | None = None  # None: not set (text)
    reasoning: Reasoning | None = None  # None: not set (the model's default)

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.kind is not OutputFormat.TEXT


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One generation call, as the provider adapter receives it.

    `model` is the upstream model name (already resolved from the catalog name by the router).
    `timeout_s` bounds the whole upstream call: the client's remaining gRPC deadline, or a default.
    `max_output_tokens` is the model's own output limit, for APIs that require max_tokens (Anthropic)
    when the client set none.
    `headers` go on the upstream HTTP request as they are: the call's `x-request-id`, and per attempt the
    trace context (`traceparent`). Never a secret: the provider adds its own key.
    `user` names who is calling, for upstreams that take it (OpenAI `user`, Anthropic `metadata.user_id`):
    the client's configured name, then `:` and the caller's `x-end-user-id` when it sent one; "" for none.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    timeout_s: float | None = None
    max_output_tokens: int = 4096
    headers: tuple[tuple[str, str], ...] = ()
    user: str = ""  # the caller (client and end user) for upstreams that take one
    # Capabilities the request needs beyond what its params show (images, cache breakpoints, reasoning).
    needs: frozenset[str] = frozenset()

    def capabilities_needed(self) -> frozenset[str]:
        """Every catalog capability this request needs of the deployment that serves it."""
        params = self.params
        if not (params.tools or params.response_format or self.needs):
            return self.needs
        needs = set(self.needs)
        if params.tools:
            needs.add("tools")
        if params.response_format is not None and params.response_format.kind is not OutputFormat.TEXT:
            needs.add(params.response_format.kind.name.lower())
        return frozenset(needs)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts. `estimated` marks counts the gateway made itself (one per delta relayed).
    `cached_prompt_tokens` (read from the provider's prompt cache) and `cache_write_tokens` (written to it)
    are part of `prompt_tokens`, and `cache_write_1h_tokens` (written with a 1-hour TTL) part of
    `cache_write_tokens`; `reasoning_tokens` are part of `completion_tokens`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False
    reasoning_tokens: int = 0
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0


class TextDelta:
    """The next piece of generated text. A plain slotted class: it is created once per token.

    `pieces` is how many upstream deltas the text joins: 1, unless several arrived together and the
    provider coalesced them (server/providers/http.py). Counts of tokens the gateway estimates itself
    (a cut stream's partial usage, `deltas_sent`) add up `pieces`, so coalescing does not change them.
    """

    __slots__ = ("pieces", "text")

    def __init__(self, text: str, pieces: int = 1) -> None:
        self.text = text
        self.pieces = pieces

    def __repr__(self) -> str:
        return f"TextDelta({self.text!r})" if self.pieces == 1 else f"TextDelta({self.text!r}, {self.pieces})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextDelta) and other.text == self.text and other.pieces == self.pieces

    __hash__ = None  # type: ignore[assignment]  # mutable value object, like a dataclass(eq=True)


class ReasoningDelta:
    """The next piece of the model's reasoning text, a channel apart from the reply's text. A plain
    slotted class, like TextDelta."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"ReasoningDelta({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReasoningDelta) and other.text == self.text

    __hash__ = None  # type: ignore[assignment]


class ToolCallDelta:
    """A piece of a tool call in a stream: the call's `index` in the reply; `id` and `name` on its first
    piece only; a fragment of its `arguments` JSON text. A plain slotted class, like TextDelta."""

    __slots__ = ("arguments", "id", "index", "name")

    def __init__(self, index: int, id: str = "", name: str = "", arguments: str = "") -> None:
        self.index = index
        self.id = id
        self.name = name
        self.arguments = arguments

    def __repr__(self) -> str:
        return f"ToolCallDelta({self.index}, {self.id!r}, {self.name!r}, {self.arguments!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ToolCallDelta) and (other.index, other.id, other.name, other.arguments) == (
            self.index,
            self.id,
            self.name,
            self.arguments,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Served:
    """Who served a call: the catalog model, the provider and the deployment."""

    model: str
    provider: str
    deployment: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of a successful stream: exactly one, after the last TextDelta.

    `usage` is None when the upstream reported none (we never invent zeros that look real). Providers
    set `reason`, `usage` and the upstream's own id of its answer (`upstream_request_id`, "" when it sent
    none); the router adds who served, the cost (None when unknown) and whether the stream was resumed
    after a failure.
    """

    reason: FinishReason
    usage: Usage | None
    served: Served | None = None
    cost_usd: float | None = None
    resumed: bool = False
    upstream_request_id: str = ""
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()  # the reply's signed reasoning, whole


StreamEvent = TextDelta | ToolCallDelta | ReasoningDelta | Finish


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole reply, for unary calls. The router adds `served` and `cost_usd`, as for Finish."""

    text: str
    reason: FinishReason
    usage: Usage | None
    served: Served | None = None
    cost_usd: float | None = None
    upstream_request_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""  # the model's reasoning text, when the request asked for it
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()  # the reply's signed reasoning, to be sent back


# The shape every provider's streaming method returns.
