"""Requests that are not valid protobuf: INVALID_ARGUMENT `MALFORMED_REQUEST`, never UNKNOWN.

grpc.aio decodes a request with its handler's `request_deserializer` before any of the gateway's code runs,
and reports a DecodeError there (a string field that is not UTF-8, a truncated field) as UNKNOWN "Unexpected
DecodeError", with a traceback in the log. `add_service` registers the servicer as the generated
`add_AIServiceServicer_to_server` does, with deserializers that never raise: a message that cannot be
decoded arrives as `Malformed`, and the servicer answers it like any invalid request (service.py; an
InteractiveStream session ends with the status, session.py).

    bytes ──► tolerant deserializer ──► GenerateRequest …        (decoded: as before)
                                   └──► Malformed(type name)     (the servicer raises MalformedRequest)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.errors import MalformedRequest

__all__ = ["Malformed", "add_service", "malformed_request", "tolerant"]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request message that could not be decoded as `type_name`."""

    type_name: str


def malformed_request(message: Malformed) -> MalformedRequest:
    return MalformedRequest(
        f"the request is not a valid {message.type_name} protobuf message "
        "(a string field that is not UTF-8, or a truncated or mistyped field)",
        metadata={"message_type": message.type_name},
    )


def tolerant(parse: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    """`parse`, except that bytes it cannot decode become `Malformed(type_name)` instead of an exception."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return Malformed(type_name)

    return deserialize


class _Registrar:
    """Takes what the generated `add_…Servicer_to_server` registers, so that it can be changed first."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_service(
    add_generated: Callable[[Any, Any], None], servicer: object, server: grpc.aio.Server, types: Mapping[str, str]
) -> None:
    """Register `servicer` on `server` as `add_generated` would, every method's requests decoded tolerantly;
    `types` names each method's request type (for the error message)."""
    registrar = _Registrar()
    add_generated(servicer, registrar)
    handlers = {}
    for method, handler in registrar.handlers.items():
        parse = handler.request_deserializer
        assert parse is not None  # the generated code names every request type's FromString
        handlers[method] = replace_deserializer(handler, tolerant(parse, types[method]))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(registrar.service, handlers),))
    server.add_registered_method_handlers(registrar.service, handlers)


def replace_deserializer(
    handler: grpc.RpcMethodHandler[Any, Any], deserializer: Callable[[bytes], Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with another request deserializer, rebuilt with grpc's public constructors."""
    serializer = handler.response_serializer
    behavior: Any
    if handler.request_streaming and handler.response_streaming:
        behavior = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(behavior, deserializer, serializer)
    if handler.request_streaming:
        behavior = handler.stream_unary
        return grpc.stream_unary_rpc_method_handler(behavior, deserializer, serializer)
    if handler.response_streaming:
        behavior = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(behavior, deserializer, serializer)
    behavior = handler.unary_unary
    return grpc.unary_unary_rpc_method_handler(behavior, deserializer, serializer)
