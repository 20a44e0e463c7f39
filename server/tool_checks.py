"""Checks of tools, tool choice, response formats and the tool fields of messages.

Every violation names its field (`config.tools[2].parameters`, `messages[3].tool_call_id`), so that the
client learns every problem at once, as from validation.py. JSON Schemas are bounded before they are
parsed (bytes) and before they are checked (nesting depth), then checked against the JSON Schema
metaschema (draft 2020-12), so that an upstream never sees a schema it would refuse or choke on.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema

from server import defaults
from server.errors import FieldViolation
from server.types import OutputFormat, Role, SamplingParams, ToolCall, ToolMode

__all__ = ["check_message_tools", "check_tool_options", "object_of", "schema_of"]

# What OpenAI accepts for function and schema names, the strictest of the three providers.
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


@functools.lru_cache(maxsize=256)
def schema_of(text: str) -> dict[str, Any]:
    """A checked schema's JSON text, parsed (cached: a schema is usually sent with every call). An empty
    text is the empty object schema. Callers must not mutate the result."""
    return json.loads(text) if text else {"type": "object", "properties": {}}


def object_of(arguments: str) -> dict[str, Any]:
    """Checked tool-call arguments (a JSON object's text, or empty), parsed."""
    return json.loads(arguments) if arguments else {}


def check_tool_options(params: SamplingParams) -> list[FieldViolation]:
    """The violations in `params`' tools, tool choice and response format."""
    violations: list[FieldViolation] = []
    if len(params.tools) > defaults.MAX_TOOLS:
        violations.append(
            FieldViolation("config.tools", f"at most {defaults.MAX_TOOLS} tools, got {len(params.tools)}")
        )
    names: set[str] = set()
    for i, tool in enumerate(params.tools[: defaults.MAX_TOOLS]):
        where = f"config.tools[{i}]"
        violations += _name_violations(tool.name, f"{where}.name")
        if tool.name in names:
            violations.append(FieldViolation(f"{where}.name", f"tool {tool.name!r} is declared twice"))
        names.add(tool.name)
        if tool.parameters:
            violations += _schema_violations(tool.parameters, f"{where}.parameters")
    violations += _choice_violations(params, names)
    violations += _format_violations(params)
    return violations


def check_message_tools(i: int, role: str, tool_calls: Sequence[ToolCall], tool_call_id: str) -> list[FieldViolation]:
    """The violations in the tool fields of `messages[i]`."""
    where = f"messages[{i}]"
    violations: list[FieldViolation] = []
    if role == Role.TOOL.value and not tool_call_id:
        violations.append(FieldViolation(f"{where}.tool_call_id", "required for a tool message"))
    elif tool_call_id and role != Role.TOOL.value:
        violations.append(FieldViolation(f"{where}.tool_call_id", "only a tool message answers a tool call"))
    if tool_calls and role != Role.ASSISTANT.value:
        violations.append(FieldViolation(f"{where}.tool_calls", "only an assistant message carries tool calls"))
    if len(tool_calls) > defaults.MAX_TOOL_CALLS_PER_MESSAGE:
        limit = defaults.MAX_TOOL_CALLS_PER_MESSAGE
        violations.append(FieldViolation(f"{where}.tool_calls", f"at most {limit} tool calls, got {len(tool_calls)}"))
    for j, call in enumerate(tool_calls[: defaults.MAX_TOOL_CALLS_PER_MESSAGE]):
        path = f"{where}.tool_calls[{j}]"
        if not call.id:
            violations.append(FieldViolation(f"{path}.id", "required"))
        violations += _name_violations(call.name, f"{path}.name")
        if call.arguments and not _is_json_object(call.arguments):
            violations.append(FieldViolation(f"{path}.arguments", "must be the JSON text of an object"))
    return violations


def _choice_violations(params: SamplingParams, names: set[str]) -> list[FieldViolation]:
    choice = params.tool_choice
    if choice is None:
        return []
    if choice.mode is ToolMode.NAMED:
        if choice.name not in names:
            return [FieldViolation("config.tool_choice.name", f"names no declared tool: {choice.name[:64]!r}")]
    elif choice.name:
        return [FieldViolation("config.tool_choice.name", "only with TOOL_CHOICE_MODE_NAMED")]
    if choice.mode in (ToolMode.REQUIRED, ToolMode.NAMED) and not params.tools:
        return [FieldViolation("config.tool_choice", "a tool call is required but no tools are declared")]
    return []


def _format_violations(params: SamplingParams) -> list[FieldViolation]:
    fmt = params.response_format
    if fmt is None or fmt.kind is not OutputFormat.JSON_SCHEMA:
        return []
    where = "config.response_format.json_schema"
    violations = _name_violations(fmt.name, f"{where}.name")
    if not fmt.schema:
        violations.append(FieldViolation(f"{where}.schema", "required"))
    else:
        violations += _schema_violations(fmt.schema, f"{where}.schema")
    return violations


def _name_violations(name: str, field: str) -> list[FieldViolation]:
    if _NAME.fullmatch(name):
        return []
    return [FieldViolation(field, f"must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -, got {name[:80]!r}")]


def _schema_violations(text: str, field: str) -> list[FieldViolation]:
    problem = _schema_problem(text)
    return [] if problem is None else [FieldViolation(field, problem)]


@functools.lru_cache(maxsize=256)
def _schema_problem(text: str) -> str | None:
    """What is wrong with a schema's JSON text, or None (cached: clients send the same schema each call)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > defaults.MAX_SCHEMA_BYTES:
        return f"the schema is {size} bytes; the limit is {defaults.MAX_SCHEMA_BYTES}"
    if _depth(text) > defaults.MAX_SCHEMA_DEPTH:
        return f"the schema nests deeper than {defaults.MAX_SCHEMA_DEPTH} levels"
    try:
        schema = json.loads(text)
    except ValueError as exc:
        return f"not valid JSON: {str(exc)[:120]}"
    if not isinstance(schema, dict):
        return f"must be a JSON object (a schema), got a JSON {type(schema).__name__}"
    if schema.get("type", "object") != "object":
        return f"must be an object schema (type object), got type {str(schema['type'])[:40]!r}"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path)[:120]
        return f"not a valid JSON Schema at '/{path}': {str(exc.message)[:160]}"
    return None


def _depth(text: str) -> int:
    """The deepest nesting of objects and arrays in JSON `text`, counted before parsing it (brackets in
    strings are skipped), so that a hostile schema never reaches a recursive parser or checker."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _is_json_object(text: str) -> bool:
    if len(text) > defaults.MAX_REQUEST_CONTENT_BYTES or _depth(text) > defaults.MAX_SCHEMA_DEPTH * 2:
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
