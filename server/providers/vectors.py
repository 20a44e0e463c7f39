"""The vectors an upstream answers an Embed call with, checked before they go anywhere.

An answer must hold exactly one vector per text, each a non-empty list of finite numbers at most
MAX_VECTOR_LENGTH long; anything else is UpstreamBadResponse (UNAVAILABLE, UPSTREAM_BAD_RESPONSE) whose
metadata names the bound (`limit`: vector_count, vector_index, vector_length or vector_values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from server import defaults
from server.errors import UpstreamBadResponse

__all__ = ["bad_index", "check_count", "checked_vector"]


def check_count(provider: str, got: int, texts: int) -> None:
    """One vector per text, or UpstreamBadResponse."""
    if got != texts:
        raise UpstreamBadResponse(
            f"upstream {provider} answered {got} vectors for {texts} texts",
            provider=provider,
            metadata={"limit": "vector_count", "vectors": str(got), "texts": str(texts)},
        )


def bad_index(provider: str) -> UpstreamBadResponse:
    """A vector placed at an index that is no text's, or at one twice."""
    return _bad(provider, "vector_index", "a vector index out of range or given twice")


def checked_vector(provider: str, raw: object) -> tuple[float, ...]:
    """`raw` as a vector: a list of 1 to MAX_VECTOR_LENGTH finite numbers."""
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        raise _bad(provider, "vector_values", "a vector that is not a list of numbers")
    if len(raw) > defaults.MAX_VECTOR_LENGTH:
        raise UpstreamBadResponse(
            f"upstream {provider} answered a vector longer than {defaults.MAX_VECTOR_LENGTH}",
            provider=provider,
            metadata={"limit": "vector_length", "limit_max": str(defaults.MAX_VECTOR_LENGTH)},
        )
    values = tuple(raw)
    for value in values:
        if type(value) not in (float, int) or not math.isfinite(value):
            raise _bad(provider, "vector_values", "a vector value that is not a finite number")
    return tuple(float(v) for v in values)


def _bad(provider: str, limit: str, what: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"upstream {provider} answered {what}", provider=provider, metadata={"limit": limit})
