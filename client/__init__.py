"""Python client for the AI gateway: AsyncAIClient (asyncio) and AIClient (blocking), with one error tree.

    from client import AIClient

    with AIClient(target="gateway.example.com:443", token="...") as client:
        for event in client.stream_generate("Tell me a story", model="demo"):
            ...
        with client.interactive(model="demo", system="Be brief.") as session:   # InteractiveStream
            for event in session.send("Hello"):
                ...
        for model in client.list_models():
            print(model.name, model.aliases)

Options (keyword-only, the same for both clients): `target` (env GATEWAY_TARGET, default
127.0.0.1:50051), `token` (env GATEWAY_TOKEN), `ca_file`, `plaintext` (loopback targets only),
`timeout` (seconds per call, default 60), `options` (grpc channel options), `retry` and `load_balancing`
("round_robin": spread calls over every address the target resolves to). Calls take
`sampling=SamplingOptions(...)` or its fields as keywords.

The names below are imported on first use: `import client` alone does not import grpc, so that the CLI
(`python -m client`, which imports this package first) can set GRPC_VERBOSITY before gRPC reads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.async_client import AsyncAIClient, AsyncStream
    from client.errors import (
        AuthenticationError,
        ClientError,
        ConfigurationError,
        DeadlineExceededError,
        GatewayError,
        InternalServerError,
        InvalidArgumentError,
        NotImplementedByServerError,
        PermissionDeniedError,
        RateLimitError,
        StreamProtocolError,
        UnavailableError,
        UnknownStatusError,
    )
    from client.interactive import AsyncSession, AsyncTurn
    from client.retry import RetryPolicy
    from client.sync_client import AIClient, Stream
    from client.sync_interactive import Session, Turn
    from client.types import (
        EmbedResult,
        EmbedTaskType,
        FinishReason,
        GenerateResult,
        Message,
        MessageLike,
        ModelDeployment,
        ModelInfo,
        RateLimits,
        ReasoningBlock,
        ReasoningDelta,
        SamplingOptions,
        SessionMode,
        StreamEnd,
        StreamEvent,
        TextDelta,
        TokenCount,
        Tool,
        ToolCall,
        ToolCallDelta,
        TurnEvent,
        TurnResult,
        Usage,
    )

_MODULES = {
    "client.async_client": ("AsyncAIClient", "AsyncStream"),
    "client.errors": (
        "AuthenticationError",
        "ClientError",
        "ConfigurationError",
        "DeadlineExceededError",
        "GatewayError",
        "InternalServerError",
        "InvalidArgumentError",
        "NotImplementedByServerError",
        "PermissionDeniedError",
        "RateLimitError",
        "StreamProtocolError",
        "UnavailableError",
        "UnknownStatusError",
    ),
    "client.interactive": ("AsyncSession", "AsyncTurn"),
    "client.retry": ("RetryPolicy",),
    "client.sync_client": ("AIClient", "Stream"),
    "client.sync_interactive": ("Session", "Turn"),
    "client.types": (
        "EmbedResult",
        "EmbedTaskType",
        "FinishReason",
        "GenerateResult",
        "Message",
        "MessageLike",
        "ModelDeployment",
        "ModelInfo",
        "RateLimits",
        "SamplingOptions",
        "SessionMode",
        "StreamEnd",
        "StreamEvent",
        "ReasoningBlock",
        "ReasoningDelta",
        "TextDelta",
        "TokenCount",
        "Tool",
        "ToolCall",
        "ToolCallDelta",
        "TurnEvent",
        "TurnResult",
        "Usage",
    ),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "AIClient",
    "AsyncAIClient",
    "AsyncSession",
    "AsyncStream",
    "AsyncTurn",
    "AuthenticationError",
    "ClientError",
    "ConfigurationError",
    "DeadlineExceededError",
    "EmbedResult",
    "EmbedTaskType",
    "FinishReason",
    "GatewayError",
    "GenerateResult",
    "InternalServerError",
    "InvalidArgumentError",
    "Message",
    "MessageLike",
    "ModelDeployment",
    "ModelInfo",
    "NotImplementedByServerError",
    "PermissionDeniedError",
    "RateLimitError",
    "RateLimits",
    "ReasoningBlock",
    "ReasoningDelta",
    "RetryPolicy",
    "SamplingOptions",
    "Session",
    "SessionMode",
    "Stream",
    "StreamEnd",
    "StreamEvent",
    "StreamProtocolError",
    "TextDelta",
    "TokenCount",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Turn",
    "TurnEvent",
    "TurnResult",
    "UnavailableError",
    "UnknownStatusError",
    "Usage",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
