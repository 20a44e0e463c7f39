"""Request checks. Every violation is collected, so the client learns about all of them at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from server import defaults
from server.errors import FieldViolation, InvalidRequest, ModelNotFound, echo, unknown_model_description
from server.tool_checks import check_message_tools, check_tool_options
from server.types import ChatMessage, Role, SamplingParams, ToolCall

__all__ = ["UncheckedMessage", "check_request"]

_ROLES = {role.value: role for role in Role}


@dataclass(frozen=True, slots=True)
class UncheckedMessage:
    """A message as the client sent it, before its role is known to be valid."""

    role: str
    content: str
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


def check_request(
    *,
    model: str,
    known_models: Sequence[str],
    model_max_tokens: int | None,
    messages: Sequence[UncheckedMessage],
    params: SamplingParams,
    max_content_bytes: int,
) -> tuple[ChatMessage, ...]:
    """Return the checked messages, or raise InvalidRequest listing every violation.

    `model_max_tokens` is the resolved model's cap (None when the model is unknown). When the model name
    is the only problem, ModelNotFound is raised instead, so clients can tell it apart by its reason.
    """
    violations: list[FieldViolation] = []
    unknown: FieldViolation | None = None
    if not model:
        violations.append(FieldViolation("model", "required"))
    elif len(model) > defaults.MAX_MODEL_NAME_CHARS:
        # Before any lookup: closest-name matching is quadratic in the name's length.
        violations.append(
            FieldViolation("model", f"is {len(model)} characters long; at most {defaults.MAX_MODEL_NAME_CHARS}")
        )
    elif model_max_tokens is None:
        unknown = FieldViolation("model", unknown_model_description(model, known_models))
        violations.append(unknown)

    if not messages:
        violations.append(FieldViolation("messages", "at least one message is required"))
    checked: list[ChatMessage] = []
    content_bytes = 0
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            violations.append(
                FieldViolation(
                    f"messages[{i}].role", f"must be system, user, assistant or tool, got {echo(message.role)}"
                )
            )
        else:
            checked.append(ChatMessage(role, message.content, message.name, message.tool_calls, message.tool_call_id))
        content_bytes += _utf8_len(message.content) + _utf8_len(message.name)
        if message.tool_calls or message.tool_call_id:
            violations += check_message_tools(i, message.role, message.tool_calls, message.tool_call_id)
            content_bytes += sum(len(c.arguments) + len(c.name) + len(c.id) for c in message.tool_calls)
        elif role is Role.TOOL:
            violations += check_message_tools(i, message.role, (), "")
    if content_bytes > max_content_bytes:
        violations.append(
            FieldViolation("messages", f"total content is {content_bytes} bytes; the limit is {max_content_bytes}")
        )

    violations += _check_params(params, model_max_tokens or defaults.MAX_TOKENS_LIMIT)
    if unknown is not None and violations == [unknown]:
        raise ModelNotFound(model, known_models)
    if violations:
        raise InvalidRequest(violations)
    return tuple(checked)


def _check_params(params: SamplingParams, max_tokens_cap: int) -> list[FieldViolation]:
    violations = []
    if params.temperature is not None and not 0.0 <= params.temperature <= 2.0:
        violations.append(FieldViolation("config.temperature", f"must be in [0, 2], got {params.temperature:g}"))
    if params.top_p is not None and (math.isnan(params.top_p) or not 0.0 < params.top_p <= 1.0):
        violations.append(FieldViolation("config.top_p", f"must be in (0, 1], got {params.top_p:g}"))
    if params.max_tokens is not None and not 1 <= params.max_tokens <= max_tokens_cap:
        violations.append(
            FieldViolation("config.max_tokens", f"must be in [1, {max_tokens_cap}], got {params.max_tokens}")
        )
    if len(params.stop) > defaults.MAX_STOP_SEQUENCES:
        violations.append(
            FieldViolation(
                "config.stop", f"at most {defaults.MAX_STOP_SEQUENCES} stop sequences, got {len(params.stop)}"
            )
        )
    for i, sequence in enumerate(params.stop):
        if not sequence:
            violations.append(FieldViolation(f"config.stop[{i}]", "must not be empty"))
    if params.tools or params.tool_choice or params.response_format:
        violations += check_tool_options(params)
    return violations


def _utf8_len(text: str) -> int:
    # isascii() is a fast scan; encoding is only needed for non-ASCII text.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
