"""`resume: continue`: the request that picks a stream up after it failed mid-way.

The partial reply goes back as an assistant turn, followed by an instruction to continue it; the client's
max_tokens shrinks by what was already streamed. The usage of the final chunk then adds the completion
tokens streamed before the failure (the cut attempt's own prompt tokens are unknown: upstreams report
usage only at the end of a stream, so they are not included).
"""

from __future__ import annotations

from dataclasses import replace

from server.types import ChatMessage, ChatRequest, Role, Usage

__all__ = ["CONTINUE_INSTRUCTION", "add_streamed", "continuation"]

CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off. Continue it from exactly where it stopped: do not repeat anything "
    "already written, and add no preamble."
)


def continuation(request: ChatRequest, partial: str, streamed_tokens: int) -> ChatRequest:
    messages = (*request.messages, ChatMessage(Role.ASSISTANT, partial), ChatMessage(Role.USER, CONTINUE_INSTRUCTION))
    params = request.params
    if params.max_tokens is not None:
        params = replace(params, max_tokens=max(params.max_tokens - streamed_tokens, 1))
    return replace(request, messages=messages, params=params)


def add_streamed(usage: Usage | None, streamed_tokens: int) -> Usage | None:
    """`usage` of the resumed attempt plus the completion tokens streamed before it (counted by the
    gateway, hence `estimated`; the cut attempt's prompt tokens are unknown and left out)."""
    if usage is None:
        return None
    return replace(
        usage,
        completion_tokens=usage.completion_tokens + streamed_tokens,
        total_tokens=usage.total_tokens + streamed_tokens,
        estimated=True,
    )
