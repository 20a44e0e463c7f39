"""Bearer-token authentication for every RPC except health checks and reflection.

`authorization: Bearer <token>` is hashed with sha256 and compared with every configured digest using
`hmac.compare_digest`, so neither the token nor which client matched leaks through timing. A rejected
call gets UNAUTHENTICATED from a handler of the same arity as the one it replaces, and never reaches the
servicer (or an upstream). Tokens are never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeAlias

import grpc

from server.config import ClientToken
from server.errors import Unauthenticated, abort, code_name
from server.observe.record import CallRecord
from server.observe.request_id import CURRENT_REQUEST_ID, REQUEST_ID_HEADER, request_id_from
from server.observe.trace import Tracing

__all__ = ["CURRENT_CLIENT", "EXEMPT_METHODS", "BearerAuthInterceptor", "authenticate"]

# The configured name of the client making the current call (None without auth). gRPC runs the handler in
# the context the interceptor set, so per-client limits, budgets and logs can read it anywhere below.
CURRENT_CLIENT: ContextVar[str | None] = ContextVar("gateway_current_client", default=None)

# Health (load balancers probe without tokens) and reflection (it only describes the published contract).
EXEMPT_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
_SCHEME = "bearer "

Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]"


def authenticate(metadata: Sequence[tuple[str, str | bytes]] | None, tokens: Sequence[ClientToken]) -> str | None:
    """The name of the client whose token is in `metadata`, or None."""
    header = next((value for key, value in metadata or () if key == "authorization"), None)
    if not isinstance(header, str) or header[: len(_SCHEME)].lower() != _SCHEME:
        return None
    digest = hashlib.sha256(header[len(_SCHEME) :].strip().encode()).digest()
    matched = None
    for token in tokens:  # no early exit: every digest is compared
        if hmac.compare_digest(digest, token.sha256):
            matched = token.name
    return matched


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Sequence[ClientToken], *, tracing: Tracing | None = None) -> None:
        self.tokens = tuple(tokens)  # replaced whole by a config reload
        self._tracing = tracing or Tracing()  # a refused call is traced as any other

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in EXEMPT_METHODS:
            return handler
        client = authenticate(handler_call_details.invocation_metadata, self.tokens)
        if client is None:
            return _rejecting(handler, handler_call_details.method, self._tracing)
        CURRENT_CLIENT.set(client)
        return handler


def _rejecting(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, tracing: Tracing
) -> grpc.RpcMethodHandler[Any, Any]:
    error = Unauthenticated(
        "missing or invalid credentials: send metadata 'authorization: Bearer <token>' with a token the gateway knows"
    )
    # `method` is one the server registered (an unknown one has no handler), so its name is safe to log.
    name = method.rpartition("/")[2]
    # In an InteractiveStream `request_id` names a turn; the session's own id goes by another key.
    key = "session_request_id" if handler.request_streaming and handler.response_streaming else "request_id"

    async def reject(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # The refused call gets its request id, its access log line and its span too (no client name: it
        # proved none), before its status.
        metadata = tuple(context.invocation_metadata() or ())
        request_id = request_id_from(metadata)
        CURRENT_REQUEST_ID.set(request_id)
        refused = Unauthenticated(error.message, metadata={key: request_id})
        record = CallRecord(name, None, request_id=request_id, code=code_name(refused), reason=refused.reason)
        trace = tracing.begin(record, metadata)
        record.finish()
        trace.end(record)
        headers = ((REQUEST_ID_HEADER, request_id),)
        await context.send_initial_metadata(headers)
        await abort(context, refused, headers)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject, **kwargs)
    return grpc.unary_unary_rpc_method_handler(reject, **kwargs)
