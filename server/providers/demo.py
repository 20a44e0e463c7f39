"""The offline demo provider: echoes the last user message back word by word. No keys, no network.

It exists so that `make run`, grpcurl and the client work on a fresh machine, and it is deterministic:
the reply to "hello brave world" is the deltas "hello", " brave", " world". Usage counts words.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator

from server.providers.base import Provider
from server.types import (
    ChatRequest,
    Completion,
    Finish,
    FinishReason,
    Role,
    StreamEvent,
    TextDelta,
    Usage,
)

__all__ = ["DemoProvider"]

# A word and the whitespace before it, so that the deltas concatenate to the original text.
_WORDS = re.compile(r"\s*\S+")
EMPTY_REPLY = "(the demo model echoes your last user message; it was empty)"


class DemoProvider(Provider):
    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        words, reason, usage = _reply(request)
        for word in words:
            yield TextDelta(word)
        yield Finish(reason, usage)

    async def complete(self, request: ChatRequest) -> Completion:
        words, reason, usage = _reply(request)
        return Completion("".join(words), reason, usage)


def _reply(request: ChatRequest) -> tuple[list[str], FinishReason, Usage]:
    last_user = next((m.content for m in reversed(request.messages) if m.role is Role.USER), "")
    words = _WORDS.findall(last_user) or [EMPTY_REPLY]
    reason = FinishReason.STOP
    limit = request.params.max_tokens
    if limit is not None and len(words) > limit:
        words, reason = words[:limit], FinishReason.LENGTH
    for stop in request.params.stop:
        text = "".join(words)
        if stop in text:
            words, reason = _WORDS.findall(text[: text.index(stop)]), FinishReason.STOP
    prompt_tokens = sum(len(m.content.split()) for m in request.messages)
    return words, reason, Usage(prompt_tokens, len(words), prompt_tokens + len(words))
