"""Every default of the client, in one place. Keyword options override them; the environment fills in
what the caller leaves out.

    option     argument            environment       default
    target     target="host:port"  GATEWAY_TARGET    127.0.0.1:50051
    token      token="..."         GATEWAY_TOKEN     none (no authorization metadata)
    timeout    timeout=60.0        -                 60 s deadline per call
    retry      retry=RetryPolicy() -                 5 attempts, backoff 0.1 s doubling to 1 s (client/retry.py)
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "ERROR_DOMAIN",
    "RETRY_BACKOFF_MULTIPLIER",
    "RETRY_INITIAL_BACKOFF_S",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_MAX_BACKOFF_S",
    "RETRY_MAX_DELAY_S",
    "TARGET_ENV",
    "TOKEN_ENV",
]

TARGET_ENV = "GATEWAY_TARGET"
TOKEN_ENV = "GATEWAY_TOKEN"  # noqa: S105  (the variable's name, not a token)
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 60.0
# google.rpc.ErrorInfo.domain of the errors the gateway reports (see protos/ai_service.proto).
ERROR_DOMAIN = "gateway.holysheep.ai"
# Retries (client/retry.py): attempts per call, and the exponential backoff between them.
RETRY_MAX_ATTEMPTS = 5
RETRY_INITIAL_BACKOFF_S = 0.1
RETRY_MAX_BACKOFF_S = 1.0
RETRY_BACKOFF_MULTIPLIER = 2.0
# The longest RetryInfo delay the client waits out by itself (RESOURCE_EXHAUSTED); a longer one is raised
# at once, with its retry_after, for the caller to decide.
RETRY_MAX_DELAY_S = 2.0
