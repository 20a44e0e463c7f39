"""What the fakes' embedding and token-count endpoints share: the vectors they answer and how they count.

Vectors: a text's vector is the bytes of its SHA-256, repeated, each mapped to [-1, 1] and rounded to 6
places, `FAKE_DIMENSIONS` long unless the request asks for another length: deterministic, so a test
computes what it expects with `fake_vector`. Counts: one token per whitespace-separated word, as the
fakes' chat usage counts prompts, so that a count equals the prompt_tokens of the same request's reply.

Model names of the embedding endpoints, besides the faults every fake has (``fault-500``, …):

``embed-short``
    One vector fewer than the texts (a broken upstream; the gateway must refuse the answer).
``no-usage``
    The OpenAI-compatible answer without ``usage``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["FAKE_DIMENSIONS", "SHORT", "fake_vector", "word_count"]

FAKE_DIMENSIONS = 8
SHORT = "embed-short"


def fake_vector(text: str, dimensions: int = FAKE_DIMENSIONS) -> list[float]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round(digest[i % len(digest)] / 127.5 - 1.0, 6) for i in range(dimensions)]


def word_count(texts: Iterable[str]) -> int:
    return sum(len(text.split()) for text in texts)
