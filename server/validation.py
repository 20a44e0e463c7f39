"""Request checks. Every violation is collected, so the client learns about all of them at once."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from server import defaults
from server.errors import FieldViolation, InvalidRequest, ModelNotFound, echo, unknown_model_description
from server.tool_checks import check_message_tools, check_tool_options
from server.types import ChatMessage, Image, ReasoningBlock, Role, SamplingParams, ToolCall

__all__ = [
    "CACHE_TTLS_S",
    "IMAGE_MIME_TYPES",
    "MAX_CACHE_BREAKPOINTS",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_REASONING_BLOCKS",
    "MAX_REDACTED_BYTES",
    "MAX_SIGNATURE_BYTES",
    "OPAQUE_BASE64",
    "UncheckedMessage",
    "check_request",
]

_ROLES = {role.value: role for role in Role}
# Anthropic's limits: at most 4 cache breakpoints a request, each with a 5-minute or 1-hour TTL (the two it
# prices), the 1-hour ones first.
MAX_CACHE_BREAKPOINTS = 4
CACHE_TTLS_S = (300, 3600)
# Signed reasoning blocks sent back: opaque base64 from the provider, bounded here. Real signatures are a few
# KiB at most; a redacted block holds encrypted thinking, so it may be larger.
MAX_REASONING_BLOCKS = 64
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_REDACTED_BYTES = 1024 * 1024
OPAQUE_BASE64 = re.compile(r"[A-Za-z0-9+/_=-]*")
# Images: the types every provider takes; Anthropic's per-image limit (the request's max_request_bytes
# bounds them all together); at most this many in one request.
IMAGE_MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGES = 20


@dataclass(frozen=True, slots=True)
class UncheckedMessage:
    """A message as the client sent it, before its role is known to be valid."""

    role: str
    content: str
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    cache: bool = False  # a cache breakpoint (cache_control)
    cache_ttl_s: float | None = None  # its ttl; None: the provider's default
    images: tuple[tuple[int, Image], ...] = ()  # (the index among the message's parts, the image)
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()


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
    breakpoints = 0
    image_count = 0
    short_ttl = False  # a 5-minute (or default) breakpoint came before
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            violations.append(
                FieldViolation(
                    f"messages[{i}].role", f"must be system, user, assistant or tool, got {echo(message.role)}"
                )
            )
        else:
            images = tuple(image for _, image in message.images)
            checked.append(
                ChatMessage(
                    role,
                    message.content,
                    message.name,
                    message.tool_calls,
                    message.tool_call_id,
                    message.cache,
                    images,
                    int(message.cache_ttl_s or 0),
                    message.reasoning_blocks,
                )
            )
        content_bytes += _utf8_len(message.content) + _utf8_len(message.name)
        if message.tool_calls or message.tool_call_id:
            violations += check_message_tools(i, message.role, message.tool_calls, message.tool_call_id)
            content_bytes += sum(len(c.arguments) + len(c.name) + len(c.id) for c in message.tool_calls)
        elif role is Role.TOOL:
            violations += check_message_tools(i, message.role, (), "")
        if message.images:
            image_count += len(message.images)
            content_bytes += sum(len(image.data) + len(image.url) for _, image in message.images)
            violations += _check_images(i, role, message.images)
        if message.reasoning_blocks:
            content_bytes += sum(len(b.text) + len(b.signature) + len(b.redacted) for b in message.reasoning_blocks)
            violations += _check_reasoning_blocks(i, role, message.reasoning_blocks)
        if message.cache:
            breakpoints += 1
            where = f"messages[{i}].cache_control.ttl"
            if message.cache_ttl_s is not None and message.cache_ttl_s not in CACHE_TTLS_S:
                violations.append(
                    FieldViolation(where, "must be 5m (300s), 1h (3600s) or unset (the provider's default)")
                )
            elif message.cache_ttl_s == 3600 and short_ttl:
                violations.append(FieldViolation(where, "a 1-hour breakpoint must come before every 5-minute one"))
            short_ttl = short_ttl or message.cache_ttl_s != 3600
    if image_count > MAX_IMAGES:
        violations.append(FieldViolation("messages", f"{image_count} images; the limit is {MAX_IMAGES}"))
    if breakpoints > MAX_CACHE_BREAKPOINTS:
        violations.append(
            FieldViolation("messages", f"{breakpoints} cache breakpoints; the limit is {MAX_CACHE_BREAKPOINTS}")
        )
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


def _check_images(i: int, role: Role | None, images: Sequence[tuple[int, Image]]) -> list[FieldViolation]:
    violations = []
    for j, image in images:
        where = f"messages[{i}].parts[{j}].image"
        if role is not Role.USER:
            violations.append(FieldViolation(where, "images go in user messages only"))
        if image.data:
            if image.mime_type not in IMAGE_MIME_TYPES:
                allowed = ", ".join(IMAGE_MIME_TYPES)
                violations.append(
                    FieldViolation(f"{where}.mime_type", f"must be one of {allowed}, got {image.mime_type[:64]!r}")
                )
            if len(image.data) > MAX_IMAGE_BYTES:
                violations.append(
                    FieldViolation(f"{where}.data", f"{len(image.data)} bytes; the limit is {MAX_IMAGE_BYTES}")
                )
        elif image.url:
            if not image.url.startswith(("https://", "http://", "data:image/")):
                violations.append(FieldViolation(f"{where}.url", "must be an https URL or a data:image/ URL"))
            elif image.url.startswith("data:") and _data_url_mime(image.url) not in IMAGE_MIME_TYPES:
                violations.append(FieldViolation(f"{where}.url", "a data URL must be base64 of an allowed image type"))
            if image.mime_type and image.mime_type not in IMAGE_MIME_TYPES:
                allowed = ", ".join(IMAGE_MIME_TYPES)
                violations.append(
                    FieldViolation(f"{where}.mime_type", f"must be one of {allowed}, got {image.mime_type[:64]!r}")
                )
        else:
            violations.append(FieldViolation(where, "needs a url or data"))
    return violations


def _check_reasoning_blocks(i: int, role: Role | None, blocks: Sequence[ReasoningBlock]) -> list[FieldViolation]:
    where = f"messages[{i}].reasoning_blocks"
    if role is not Role.ASSISTANT:
        return [FieldViolation(where, "reasoning blocks go in assistant messages only")]
    if len(blocks) > MAX_REASONING_BLOCKS:
        return [FieldViolation(where, f"{len(blocks)} blocks; the limit is {MAX_REASONING_BLOCKS}")]
    violations = []
    for j, block in enumerate(blocks):
        if not block.provider:
            violations.append(
                FieldViolation(f"{where}[{j}].provider", "required: the provider that made the block, as returned")
            )
        for name, value, limit in (
            ("signature", block.signature, MAX_SIGNATURE_BYTES),
            ("redacted", block.redacted, MAX_REDACTED_BYTES),
        ):
            if len(value) > limit:
                violations.append(FieldViolation(f"{where}[{j}].{name}", f"{len(value)} bytes; the limit is {limit}"))
            elif not OPAQUE_BASE64.fullmatch(value):
                violations.append(FieldViolation(f"{where}[{j}].{name}", "must be base64, as the provider sent it"))
    return violations


def _data_url_mime(url: str) -> str:
    """The MIME type of a base64 data: URL ("" when it is not one)."""
    head, sep, _ = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return ""
    return head[len("data:") : -len(";base64")]


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
    budget = params.reasoning.budget_tokens if params.reasoning is not None else None
    if budget is not None and not 1 <= budget <= max_tokens_cap:
        violations.append(
            FieldViolation("config.reasoning.budget_tokens", f"must be in [1, {max_tokens_cap}], got {budget}")
        )
    if params.tools or params.tool_choice or params.response_format:
        violations += check_tool_options(params)
    return violations


def _utf8_len(text: str) -> int:
    # isascii() is a fast scan; encoding is only needed for non-ASCII text.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
