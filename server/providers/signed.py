"""Signed reasoning blocks as the providers' wire formats carry them, both ways.

Out: a message's blocks go back only to the provider that made them (`own_blocks`): a signature is valid
for no one else, so after a fallback another provider's blocks are dropped, never forwarded.
In: what an upstream sends is bounded before it is kept (`signed_block`): a signature or redacted data that
is too long or not base64, or thinking text over its limit, is UpstreamBadResponse with the bound named in
metadata (`limit`: max_signature_bytes, max_redacted_bytes or max_thinking_bytes).
"""

from __future__ import annotations

from server.errors import UpstreamBadResponse
from server.types import ChatMessage, ReasoningBlock
from server.validation import MAX_REDACTED_BYTES, MAX_SIGNATURE_BYTES, OPAQUE_BASE64

__all__ = ["MAX_THINKING_BYTES", "own_blocks", "signed_block"]

# The thinking text a block may hold: far above what a 32,000-token budget writes.
MAX_THINKING_BYTES = 1024 * 1024


def own_blocks(message: ChatMessage, provider: str) -> tuple[ReasoningBlock, ...]:
    """The blocks of `message` that `provider` made (the others are dropped)."""
    if not message.reasoning_blocks:
        return ()
    return tuple(b for b in message.reasoning_blocks if b.provider == provider)


def signed_block(
    provider: str, *, text: str = "", signature: str = "", redacted: str = "", tool_call_id: str = ""
) -> ReasoningBlock:
    """A block from `provider`'s answer, its sizes and alphabet checked."""
    for name, value, limit in (
        ("signature", signature, MAX_SIGNATURE_BYTES),
        ("redacted", redacted, MAX_REDACTED_BYTES),
    ):
        if type(value) is not str or len(value) > limit or not OPAQUE_BASE64.fullmatch(value):
            raise UpstreamBadResponse(
                f"upstream {provider} sent a reasoning {name} that is not base64 of at most {limit} bytes",
                provider=provider,
                metadata={"limit": f"max_{name}_bytes", "limit_bytes": str(limit)},
            )
    if len(text) > MAX_THINKING_BYTES:
        raise thinking_too_long(provider)
    return ReasoningBlock(provider, text, signature, redacted, tool_call_id)


def thinking_too_long(provider: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(
        f"upstream {provider} sent a thinking block longer than {MAX_THINKING_BYTES} bytes",
        provider=provider,
        metadata={"limit": "max_thinking_bytes", "limit_bytes": str(MAX_THINKING_BYTES)},
    )
