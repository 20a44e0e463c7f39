"""Python client for the AI gateway: AsyncAIClient (asyncio) and AIClient (blocking), with one error tree.

    from client import AIClient

    with AIClient(target="gateway.example.com:443", token="...") as client:
        for event in client.stream_generate("Tell me a story", model="demo"):
            ...
        with client.interactive(model="demo", system="Be brief.") as session:   # InteractiveStream
            for event in session.send("Hello"):
                ...

Options (keyword-only, the same for both clients): `target` (env GATEWAY_TARGET, default
127.0.0.1:50051), `token` (env GATEWAY_TOKEN), `ca_file`, `plaintext` (loopback targets only),
`timeout` (seconds per call, default 60) and `options` (grpc channel options).
"""

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
from client.sync_client import AIClient, Stream
from client.sync_interactive import Session, Turn
from client.types import (
    FinishReason,
    GenerateResult,
    Message,
    MessageLike,
    SamplingOptions,
    SessionMode,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TurnEvent,
    TurnResult,
    Usage,
)

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
    "FinishReason",
    "GatewayError",
    "GenerateResult",
    "InternalServerError",
    "InvalidArgumentError",
    "Message",
    "MessageLike",
    "NotImplementedByServerError",
    "PermissionDeniedError",
    "RateLimitError",
    "SamplingOptions",
    "Session",
    "SessionMode",
    "Stream",
    "StreamEnd",
    "StreamEvent",
    "StreamProtocolError",
    "TextDelta",
    "Turn",
    "TurnEvent",
    "TurnResult",
    "UnavailableError",
    "UnknownStatusError",
    "Usage",
]
