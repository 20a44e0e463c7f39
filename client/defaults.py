"""Every default of the client, in one place. Keyword options override them; the environment fills in
what the caller leaves out.

    option     argument            environment       default
    target     target="host:port"  GATEWAY_TARGET    127.0.0.1:50051
    token      token="..."         GATEWAY_TOKEN     none (no authorization metadata)
    timeout    timeout=60.0        -                 60 s deadline per call
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "ERROR_DOMAIN",
    "TARGET_ENV",
    "TOKEN_ENV",
]

TARGET_ENV = "GATEWAY_TARGET"
TOKEN_ENV = "GATEWAY_TOKEN"  # noqa: S105  (the variable's name, not a token)
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 60.0
# google.rpc.ErrorInfo.domain of the errors the gateway reports (see protos/ai_service.proto).
ERROR_DOMAIN = "gateway.holysheep.ai"
