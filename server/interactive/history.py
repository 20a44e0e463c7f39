"""A conversation's history within one InteractiveStream session, bounded by a message count and bytes.

    history = History(max_messages=200, max_bytes=512 * 1024)
    plan = history.plan(new_messages)    # what the turn sends, and how many old messages it drops
    ...                                   # the turn runs with plan.messages
    history.commit(plan, reply)          # once the turn has a reply; a failed turn commits nothing

The session's system prompt is not part of the history: it is put before every turn and never dropped.
To fit the limits, the oldest non-system messages go first, one at a time; system messages a client sent
in a turn stay. When trimming leaves an assistant message at the front, it goes too (and is counted), so
that the context starts with a user message. A turn's own messages are never dropped: when they alone do
not fit, the turn is invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import FieldViolation, InvalidRequest
from server.types import ChatMessage, ReasoningBlock, Role, ToolCall

__all__ = ["History", "Plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    """The history a turn is sent with: the kept old messages, then the turn's new ones."""

    messages: tuple[ChatMessage, ...]
    trimmed: int


class History:
    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: tuple[ChatMessage, ...] = ()

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        return self._messages

    def plan(self, new: Sequence[ChatMessage]) -> Plan:
        """The messages to send for a turn that adds `new`; raises InvalidRequest when `new` cannot fit."""
        new_bytes = sum(map(message_bytes, new))
        if len(new) > self.max_messages or new_bytes > self.max_bytes:
            raise InvalidRequest(
                [
                    FieldViolation(
                        "messages",
                        f"the turn has {len(new)} messages of {new_bytes} bytes; the session's history holds at "
                        f"most {self.max_messages} messages of {self.max_bytes} bytes",
                    )
                ]
            )
        kept = list(self._messages)
        count, size, trimmed = len(kept) + len(new), sum(map(message_bytes, kept)) + new_bytes, 0
        while count > self.max_messages or size > self.max_bytes or (trimmed and _starts_with_reply(kept)):
            oldest = _first_non_system(kept)
            if oldest is None:
                raise InvalidRequest(
                    [FieldViolation("messages", "the system messages of the conversation exceed its history limits")]
                )
            size -= message_bytes(kept.pop(oldest))
            count -= 1
            trimmed += 1
        return Plan((*kept, *new), trimmed)

    def commit(
        self,
        plan: Plan,
        reply: str | None,
        tool_calls: tuple[ToolCall, ...] = (),
        reasoning_blocks: tuple[ReasoningBlock, ...] = (),
    ) -> None:
        """Make `plan` the history, followed by the assistant's `reply`, its `tool_calls` and its signed
        `reasoning_blocks` (None and no calls: the turn left no reply). A next turn answers the calls with
        tool messages, and its request carries the blocks back to the provider that made them."""
        if reply is None and not tool_calls:
            self._messages = plan.messages
        else:
            reply_message = ChatMessage(
                Role.ASSISTANT, reply or "", tool_calls=tool_calls, reasoning_blocks=reasoning_blocks
            )
            self._messages = (*plan.messages, reply_message)


def message_bytes(message: ChatMessage) -> int:
    size = len(message.content.encode("utf-8", "surrogatepass")) + len(message.name.encode("utf-8", "surrogatepass"))
    for call in message.tool_calls:
        size += len(call.arguments.encode("utf-8", "surrogatepass")) + len(call.name) + len(call.id)
    for image in message.images:  # a conversation's images count toward max_history_bytes too
        size += len(image.data) + len(image.url)
    for block in message.reasoning_blocks:  # and so do signed reasoning blocks
        size += len(block.text.encode("utf-8", "surrogatepass")) + len(block.signature) + len(block.redacted)
    return size


def _first_non_system(messages: Sequence[ChatMessage]) -> int | None:
    return next((i for i, m in enumerate(messages) if m.role is not Role.SYSTEM), None)


def _starts_with_reply(messages: Sequence[ChatMessage]) -> bool:
    first = _first_non_system(messages)
    return first is not None and messages[first].role is Role.ASSISTANT
