"""Client authentication for every RPC except health checks and reflection: bearer tokens and mTLS.

`authorization: Bearer <token>` is hashed with sha256 and compared with every configured digest using
`hmac.compare_digest`, so neither the token nor which client matched leaks through timing. A rejected
call gets UNAUTHENTICATED from a handler of the same arity as the one it replaces, and never reaches the
servicer (or an upstream). Tokens are never logged or echoed.

With mTLS (`tls.client_ca_file`), gRPC has verified the client's certificate before any call; a call
without an `authorization` header is then the client one of whose `certificates` names is the
certificate's subject CN or one of its SANs. A call that sends a token is judged by its token alone, so a
wrong token is refused even on a connection whose certificate names a client. The certificate is only
visible to the handler (its context's auth_context), so for such calls the handler is wrapped.

Where the credentials come from: `auth.tokens` (a name and one token each; entries sharing a name are one
client) and every `clients` entry's `tokens` and `certificates` (`credentials_of(config)`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from server.config import ClientToken, GatewayConfig
from server.errors import Unauthenticated, abort, code_name
from server.observe.record import CallRecord
from server.observe.request_id import CURRENT_REQUEST_ID, REQUEST_ID_HEADER, request_id_from
from server.observe.trace import Tracing

__all__ = [
    "CURRENT_CLIENT",
    "EXEMPT_METHODS",
    "BearerAuthInterceptor",
    "Credentials",
    "authenticate",
    "certificate_client",
    "credentials_of",
]

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


@dataclass(frozen=True, slots=True)
class Credentials:
    """What proves a client: token digests, and certificate names (CN or SAN) -> client name."""

    tokens: tuple[ClientToken, ...] = ()
    certificates: Mapping[str, str] = field(default_factory=dict)


def credentials_of(config: GatewayConfig) -> Credentials:
    tokens = list(config.auth.tokens) if config.auth else []
    tokens += [ClientToken(client.name, digest) for client in config.clients for digest in client.tokens]
    certificates = {name: client.name for client in config.clients for name in client.certificates}
    return Credentials(tuple(tokens), certificates)


def certificate_client(auth_context: Mapping[str, Iterable[bytes]], certificates: Mapping[str, str]) -> str | None:
    """The client a verified peer certificate names (its subject CN, then its SANs), or None: none, or
    names of more than one client (ambiguous, refused)."""
    names = (*auth_context.get("x509_common_name", ()), *auth_context.get("x509_subject_alternative_name", ()))
    clients = {certificates.get(name.decode(errors="replace")) for name in names} - {None}
    return clients.pop() if len(clients) == 1 else None


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        tokens: Sequence[ClientToken] | Credentials,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        credentials = tokens if isinstance(tokens, Credentials) else Credentials(tuple(tokens))
        self._tokens = credentials.tokens
        self._certificates = dict(credentials.certificates)
        self._tracing = tracing or Tracing()  # a refused call is traced as any other

    def update(self, credentials: Credentials) -> None:
        """A reloaded config's tokens and certificate names, for the calls that start from now on."""
        self._tokens = credentials.tokens
        self._certificates = dict(credentials.certificates)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in EXEMPT_METHODS:
            return handler
        metadata = handler_call_details.invocation_metadata
        client = authenticate(metadata, self._tokens)
        if client is not None:
            CURRENT_CLIENT.set(client)
            return handler
        if self._certificates and not any(key == "authorization" for key, _ in metadata or ()):
            return _by_certificate(handler, handler_call_details.method, self._certificates, self._tracing)
        return _rejecting(handler, handler_call_details.method, self._tracing)


_REFUSAL = (
    "missing or invalid credentials: send metadata 'authorization: Bearer <token>' with a token the gateway "
    "knows, or a client certificate it maps to a client"
)


async def _reject(context: grpc.aio.ServicerContext[Any, Any], method: str, streaming: bool, tracing: Tracing) -> None:
    """End a call that proved no client with UNAUTHENTICATED. It gets its request id, its access log line
    and its span too (no client name: it proved none), before its status."""
    # `method` is one the server registered (an unknown one has no handler), so its name is safe to log.
    name = method.rpartition("/")[2]
    # In an InteractiveStream `request_id` names a turn; the session's own id goes by another key.
    key = "session_request_id" if streaming else "request_id"
    metadata = tuple(context.invocation_metadata() or ())
    request_id = request_id_from(metadata)
    CURRENT_REQUEST_ID.set(request_id)
    refused = Unauthenticated(_REFUSAL, metadata={key: request_id})
    record = CallRecord(name, None, request_id=request_id, code=code_name(refused), reason=refused.reason)
    trace = tracing.begin(record, metadata)
    record.finish()
    trace.end(record)
    headers = ((REQUEST_ID_HEADER, request_id),)
    await context.send_initial_metadata(headers)
    await abort(context, refused, headers)


def _by_certificate(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, certificates: Mapping[str, str], tracing: Tracing
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler`, run as the client the peer's certificate names; refused when it names none."""
    bidi = handler.request_streaming and handler.response_streaming
    behavior = _behavior(handler)

    async def identified(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        client = certificate_client(context.auth_context(), certificates)
        if client is None:
            await _reject(context, method, bidi, tracing)
        CURRENT_CLIENT.set(client)
        return await behavior(request, context)

    return _handler_like(handler, identified)


def _behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Awaitable[Any]]:
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )  # the AIService handlers are coroutines (streams write with context.write)
    assert behavior is not None
    return behavior  # type: ignore[return-value]


def _rejecting(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, tracing: Tracing
) -> grpc.RpcMethodHandler[Any, Any]:
    bidi = handler.request_streaming and handler.response_streaming

    async def reject(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await _reject(context, method, bidi, tracing)

    return _handler_like(handler, reject)


def _handler_like(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Callable[..., Awaitable[Any]]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s arity and serializers that runs `behavior`."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
