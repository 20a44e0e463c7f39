"""Embed request checks: every violation collected, so the client learns about all of them at once.

model        required, known (else MODEL_NOT_FOUND when it is the only problem)
texts        1 to MAX_EMBED_TEXTS; together within the request byte limit
texts[i]     non-empty, at most MAX_EMBED_TEXT_BYTES of UTF-8
dimensions   in [1, MAX_EMBED_DIMENSIONS] when set
"""

from __future__ import annotations

from collections.abc import Sequence

from server import defaults
from server.errors import FieldViolation, InvalidRequest, ModelNotFound, unknown_model_description

__all__ = ["check_embed"]

_MAX_LISTED_TEXTS = 10  # violations of single texts listed; errors.py bounds the status anyway


def check_embed(
    *,
    model: str,
    known_models: Sequence[str],
    resolved: bool,
    texts: Sequence[str],
    dimensions: int | None,
    max_content_bytes: int,
) -> None:
    """Raise InvalidRequest listing every violation (ModelNotFound when the unknown model is the only one)."""
    violations: list[FieldViolation] = []
    unknown: FieldViolation | None = None
    if not model:
        violations.append(FieldViolation("model", "required"))
    elif len(model) > defaults.MAX_MODEL_NAME_CHARS:
        violations.append(
            FieldViolation("model", f"is {len(model)} characters long; at most {defaults.MAX_MODEL_NAME_CHARS}")
        )
    elif not resolved:
        unknown = FieldViolation("model", unknown_model_description(model, known_models))
        violations.append(unknown)
    violations += _check_texts(texts, max_content_bytes)
    if dimensions is not None and not 1 <= dimensions <= defaults.MAX_EMBED_DIMENSIONS:
        violations.append(
            FieldViolation("dimensions", f"must be in [1, {defaults.MAX_EMBED_DIMENSIONS}], got {dimensions}")
        )
    if unknown is not None and violations == [unknown]:
        raise ModelNotFound(model, known_models)
    if violations:
        raise InvalidRequest(violations)


def _check_texts(texts: Sequence[str], max_content_bytes: int) -> list[FieldViolation]:
    if not texts:
        return [FieldViolation("texts", "at least one text is required")]
    if len(texts) > defaults.MAX_EMBED_TEXTS:
        # Before the per-text loop: a huge list is refused by its length alone.
        return [FieldViolation("texts", f"{len(texts)} texts; the limit is {defaults.MAX_EMBED_TEXTS}")]
    violations: list[FieldViolation] = []
    total = 0
    for i, text in enumerate(texts):
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        total += size
        if len(violations) >= _MAX_LISTED_TEXTS:
            continue
        if not text:
            violations.append(FieldViolation(f"texts[{i}]", "must not be empty"))
        elif size > defaults.MAX_EMBED_TEXT_BYTES:
            violations.append(
                FieldViolation(f"texts[{i}]", f"is {size} bytes; the limit is {defaults.MAX_EMBED_TEXT_BYTES}")
            )
    if total > max_content_bytes:
        violations.append(FieldViolation("texts", f"total content is {total} bytes; the limit is {max_content_bytes}"))
    return violations
