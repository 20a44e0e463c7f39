"""Every default of the client, in one place. Keyword options override them; the environment fills in
what the caller leaves out.

    option     argument            environment       default
    target     target="host:port"  GATEWAY_TARGET    127.0.0.1:50051
    token      token="..."         GATEWAY_TOKEN     none (no authorization metadata)
    timeout    timeout=60.0        -                 60 s deadline per call
    retry      retry=RetryPolicy() -                 5 attempts, backoff 0.1 s doubling to 1 s (client/retry.py)
    balancing  load_balancing=...  -                 gRPC's pick_first; "round_robin" spreads calls over every
                                                     address the target resolves to (a headless DNS name)
    keepalive  options=[...]       -                 a ping every 30 s while calls are in flight
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "ERROR_DOMAIN",
    "KEEPALIVE_TIMEOUT_S",
    "KEEPALIVE_TIME_S",
    "LOAD_BALANCING_POLICIES",
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
# HTTP/2 pings while calls are in flight, so a dead connection is noticed during a long wait for the first token,
# and a proxy that holds back a stream's reset until its next write on the connection (nginx 1.22, when the
# instance behind it dies) sends it within a ping. The gateway accepts pings as often as every 5 s.
KEEPALIVE_TIME_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0
# gRPC's load-balancing policies a client may choose (`load_balancing=`): pick_first (gRPC's default) uses one
# address; round_robin one connection to every address the target resolves to, and calls in turn over them.
LOAD_BALANCING_POLICIES = ("pick_first", "round_robin")
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
