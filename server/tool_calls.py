"""Tool calls put together from their stream pieces (ToolCallDelta), keyed by the call's index."""

from __future__ import annotations

from server.types import ToolCall, ToolCallDelta

__all__ = ["ToolCallAssembler"]


class ToolCallAssembler:
    """Collects a stream's ToolCallDeltas; `calls()` gives the whole calls, in index order."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: dict[int, tuple[str, str, list[str]]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        parts = self._parts.get(delta.index)
        if parts is None:
            self._parts[delta.index] = (delta.id, delta.name, [delta.arguments])
        else:
            parts[2].append(delta.arguments)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(call_id, name, "".join(arguments)) for _, (call_id, name, arguments) in sorted(self._parts.items())
        )
