"""Provider-neutral types of the two calls that generate nothing: Embed and CountTokens.

    EmbedRequest   texts -> EmbedResult (one vector per text, in order, with usage)
    ChatRequest    (server/types.py) -> TokenCount (the input tokens, exact or the gateway's estimate)

`estimate_tokens` is the one estimate of the gateway: a quarter of the characters (about four per token in
English), at least 1. The client limits (server/policy/clients.py) charge it before a call, CountTokens
answers with it where the provider has no count endpoint, and Embed reports it where the provider reports
no usage. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from server.types import ChatMessage, ChatRequest, Role, Served, Usage

__all__ = [
    "CHARS_PER_TOKEN",
    "EmbedRequest",
    "EmbedResult",
    "TaskType",
    "TokenCount",
    "estimate_chat_tokens",
    "estimate_tokens",
    "estimated_usage",
]

CHARS_PER_TOKEN = 4


def estimate_tokens(texts: Iterable[str]) -> int:
    """About how many tokens `texts` are: a quarter of their characters, at least 1."""
    return max(math.ceil(sum(len(text) for text in texts) / CHARS_PER_TOKEN), 1)


def estimated_usage(texts: Iterable[str]) -> Usage:
    """The usage of an Embed call whose provider reported none: the estimate, marked as one."""
    tokens = estimate_tokens(texts)
    return Usage(tokens, 0, tokens, estimated=True)


def estimate_chat_tokens(request: ChatRequest) -> int:
    """The estimate of a chat request's input: its messages' text, tool calls and tool results."""
    texts: list[str] = []
    for message in request.messages:
        texts.append(message.content)
        texts.extend(call.arguments for call in message.tool_calls)
    texts.extend(tool.description + tool.parameters for tool in request.params.tools)
    return estimate_tokens(texts)


class TaskType(enum.Enum):
    """What the vectors are for (Gemini's taskType, by these names)."""

    RETRIEVAL_QUERY = 1
    RETRIEVAL_DOCUMENT = 2
    SEMANTIC_SIMILARITY = 3
    CLASSIFICATION = 4
    CLUSTERING = 5


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One Embed call, as the provider adapter receives it. `model` is the upstream model name; `timeout_s`,
    `headers` and `user` mean what they mean on a ChatRequest."""

    model: str
    texts: tuple[str, ...]
    dimensions: int | None = None
    task_type: TaskType | None = None
    timeout_s: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    user: str = ""

    def as_chat(self) -> ChatRequest:
        """What the policies see of the call (server/policy/seam.py): its texts as user messages, so that
        the client limits estimate and charge them like a prompt."""
        messages = tuple(ChatMessage(Role.USER, text) for text in self.texts)
        return ChatRequest(self.model, messages, timeout_s=self.timeout_s, headers=self.headers)


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """The vectors, `vectors[i]` for `texts[i]`. `usage.estimated` when the provider reported no count. The
    router adds `served` and `cost_usd`."""

    vectors: tuple[tuple[float, ...], ...]
    usage: Usage
    served: Served | None = None
    cost_usd: float | None = None
    upstream_request_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A request's input tokens: counted by the provider (`exact`) or the gateway's estimate. `cached_tokens`
    is the share in the provider's cached content, where it says. The router adds `served`."""

    input_tokens: int
    exact: bool
    cached_tokens: int = 0
    served: Served | None = None
    upstream_request_id: str = ""
