"""The offline demo provider: echoes the last user message back word by word. No keys, no network.

It exists so that `make run`, grpcurl and the client work on a fresh machine, and it is deterministic:
the reply to "hello brave world" is the deltas "hello", " brave", " world". Usage counts words.

Tools and structured output, as deterministic:
- with tools declared (and a tool choice other than none), the model calls every tool whose name is a
  word of the last user message, in parallel (required: the first tool when none is named; named: that
  tool). A call's arguments are the simplest JSON that fits the tool's schema (`demo_instance`: strings
  are the user's message, numbers its word count, booleans true, arrays empty, enums their first value),
  streamed word by word after an opening piece with the id (`call_<n>`, counting the conversation's earlier
  calls) and the name; the reply ends with TOOL_CALLS;
- a last message that is a tool result is echoed, like a user message;
- a JSON Schema response format is answered with `demo_instance` of the schema, a JSON object format
  with `{"text": <the message>}`.

Reasoning, as deterministic: with reasoning options the model first thinks "The user wrote: <the
message>" (word by word, as ReasoningDeltas when the client asked to see it; the unary reply's `reasoning`);
those words count as completion tokens and as `reasoning_tokens` either way.

Images, as deterministic: the reply to a message with images is its text followed by what the demo "sees"
in each, `[image/png image, 68 bytes]` (or `[image at <url>]`).

Embeddings, as deterministic: each text's vector is a hashed bag of its words (lower-cased, each word adds
±1 at the place its SHA-256 names), normalised to length 1, DEMO_DIMENSIONS long unless the request says
`dimensions`; texts with the same words get the same vector. Usage counts the words. CountTokens gets the
gateway's estimate, as from any provider without a count endpoint.

Prompt caching, as deterministic: the words up to and including the last message with a cache breakpoint
are reported as `cached_prompt_tokens`, as if an earlier call had written that prefix to the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

from server.embedding import EmbedRequest, EmbedResult
from server.providers.base import Provider
from server.tool_checks import schema_of
from server.types import (
    ChatRequest,
    Completion,
    Finish,
    FinishReason,
    OutputFormat,
    ReasoningDelta,
    Role,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolMode,
    Usage,
)

__all__ = ["DEMO_DIMENSIONS", "DemoProvider", "demo_embedding", "demo_instance"]

DEMO_DIMENSIONS = 16

# A word and the whitespace before it, so that the deltas concatenate to the original text.
_WORDS = re.compile(r"\s*\S+")
EMPTY_REPLY = "(the demo model echoes your last user message; it was empty)"
_MAX_DEPTH = 8


class DemoProvider(Provider):
    async def embed(self, request: EmbedRequest) -> EmbedResult:
        size = request.dimensions or DEMO_DIMENSIONS
        words = sum(len(text.split()) for text in request.texts)
        vectors = tuple(demo_embedding(text, size) for text in request.texts)
        return EmbedResult(vectors, Usage(words, 0, words))

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        calls = _tool_calls(request)
        if calls:
            for index, call in enumerate(calls):
                pieces = _WORDS.findall(call.arguments)
                yield ToolCallDelta(index, call.id, call.name)
                for piece in pieces:
                    yield ToolCallDelta(index, arguments=piece)
            yield Finish(FinishReason.TOOL_CALLS, _usage(request, sum(len(_WORDS.findall(c.arguments)) for c in calls)))
            return
        thoughts, shown = _thoughts(request)
        if shown:
            for thought in thoughts:
                yield ReasoningDelta(thought)
        words, reason, usage = _reply(request)
        for word in words:
            yield TextDelta(word)
        yield Finish(reason, _with_thoughts(usage, thoughts))

    async def complete(self, request: ChatRequest) -> Completion:
        calls = _tool_calls(request)
        if calls:
            usage = _usage(request, sum(len(_WORDS.findall(c.arguments)) for c in calls))
            return Completion("", FinishReason.TOOL_CALLS, usage, tool_calls=calls)
        thoughts, shown = _thoughts(request)
        words, reason, usage = _reply(request)
        reasoning = "".join(thoughts) if shown else ""
        return Completion("".join(words), reason, _with_thoughts(usage, thoughts), reasoning=reasoning)


def demo_embedding(text: str, size: int) -> tuple[float, ...]:
    """The demo's vector of `text`: a hashed bag of its words, of length 1 (all zeros without words)."""
    values = [0.0] * size
    for word in text.lower().split():
        digest = hashlib.sha256(word.encode("utf-8", "surrogatepass")).digest()
        values[int.from_bytes(digest[:4], "big") % size] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in values))
    return tuple(v / norm for v in values) if norm else tuple(values)


def _thoughts(request: ChatRequest) -> tuple[list[str], bool]:
    """The demo's reasoning, word by word, when the request sets reasoning options, and whether the client
    asked to see it."""
    reasoning = request.params.reasoning
    if reasoning is None:
        return [], False
    return _WORDS.findall(f"The user wrote: {_last_text(request) or '(nothing)'}"), reasoning.include


def _with_thoughts(usage: Usage, thoughts: list[str]) -> Usage:
    if not thoughts:
        return usage
    completion = usage.completion_tokens + len(thoughts)
    return replace(
        usage,
        completion_tokens=completion,
        total_tokens=usage.prompt_tokens + completion,
        reasoning_tokens=len(thoughts),
    )


def _last_text(request: ChatRequest) -> str:
    """The last user message, or the tool result when the conversation ends with one."""
    if request.messages and request.messages[-1].role is Role.TOOL:
        return request.messages[-1].content
    return next((m.content for m in reversed(request.messages) if m.role is Role.USER), "")


def _tool_calls(request: ChatRequest) -> tuple[ToolCall, ...]:
    params = request.params
    choice = params.tool_choice
    mode = choice.mode if choice is not None else ToolMode.AUTO
    if not params.tools or mode is ToolMode.NONE or request.messages[-1].role is Role.TOOL:
        return ()
    text = _last_text(request)
    if mode is ToolMode.NAMED:
        assert choice is not None
        chosen = [t for t in params.tools if t.name == choice.name]
    else:
        words = set(text.replace(",", " ").split())
        chosen = [t for t in params.tools if t.name in words]
        if not chosen and mode is ToolMode.REQUIRED:
            chosen = [params.tools[0]]
    earlier = sum(len(m.tool_calls) for m in request.messages)
    return tuple(
        ToolCall(f"call_{earlier + i + 1}", tool.name, _compact(demo_instance(schema_of(tool.parameters), text)))
        for i, tool in enumerate(chosen)
    )


def demo_instance(schema: Any, text: str, depth: int = 0) -> Any:
    """The simplest value that fits `schema`, made from `text` (see the module docstring)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return text
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    match kind:
        case "object":
            properties = schema.get("properties") or {}
            return {name: demo_instance(sub, text, depth + 1) for name, sub in properties.items()}
        case "array":
            return []
        case "integer" | "number":
            return len(text.split())
        case "boolean":
            return True
        case "null":
            return None
        case _:
            return text


def _reply(request: ChatRequest) -> tuple[list[str], FinishReason, Usage]:
    last_user = _last_text(request)
    fmt = request.params.response_format
    if fmt is not None and fmt.kind is OutputFormat.JSON_SCHEMA:
        last_user = _compact(demo_instance(schema_of(fmt.schema), last_user))
    elif fmt is not None and fmt.kind is OutputFormat.JSON_OBJECT:
        last_user = _compact({"text": last_user})
    seen = _images_seen(request)
    if seen:
        last_user = f"{last_user} {seen}" if last_user else seen
    words = _WORDS.findall(last_user) or [EMPTY_REPLY]
    reason = FinishReason.STOP
    limit = request.params.max_tokens
    if limit is not None and len(words) > limit:
        words, reason = words[:limit], FinishReason.LENGTH
    for stop in request.params.stop:
        text = "".join(words)
        if stop in text:
            words, reason = _WORDS.findall(text[: text.index(stop)]), FinishReason.STOP
    return words, reason, _usage(request, len(words))


def _images_seen(request: ChatRequest) -> str:
    """What the demo "sees" in the last user message's images: each one's type and size, or its URL."""
    last = next((m for m in reversed(request.messages) if m.role is Role.USER), None)
    if last is None or not last.images:
        return ""
    return " ".join(
        f"[{image.mime_type} image, {len(image.data)} bytes]" if image.data else f"[image at {image.url[:100]}]"
        for image in last.images
    )


def _usage(request: ChatRequest, completion_tokens: int) -> Usage:
    prompt_tokens = 0
    cached = 0
    for message in request.messages:
        prompt_tokens += len(message.content.split())
        if message.cache:
            cached = prompt_tokens  # as if an earlier call had cached the prompt up to this breakpoint
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, cached_prompt_tokens=cached)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
