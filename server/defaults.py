"""Every default number of the gateway, in one place. Config files and the environment override them."""

from __future__ import annotations

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEADLINE_MARGIN_MAX_S",
    "DEADLINE_MARGIN_S",
    "DEADLINE_MARGIN_SHARE",
    "DEFAULT_LISTEN",
    "ERROR_DOMAIN",
    "GRACE_PERIOD_S",
    "INTERACTIVE_MAX_HISTORY_BYTES",
    "INTERACTIVE_MAX_HISTORY_MESSAGES",
    "INTERACTIVE_MAX_IN_FLIGHT",
    "INTERACTIVE_MAX_QUEUED_TURNS",
    "INTERACTIVE_MAX_REQUEST_ID_BYTES",
    "INTERACTIVE_QUEUE_SIZE",
    "INTERACTIVE_REMEMBERED_IDS",
    "MAX_MESSAGE_OVERHEAD_BYTES",
    "MAX_REQUEST_CONTENT_BYTES",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_LIMIT",
    "POOL_MAX_CONNECTIONS",
    "POOL_MAX_KEEPALIVE",
    "POOL_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "SHUTDOWN_ABORT_LEAD_S",
    "WRITE_TIMEOUT_S",
]

DEFAULT_LISTEN = "127.0.0.1:50051"
# google.rpc.ErrorInfo.domain of every error the gateway reports.
ERROR_DOMAIN = "gateway.holysheep.ai"

# Validation limits (GenerationConfig and messages).
MAX_TOKENS_LIMIT = 32_000
MAX_STOP_SEQUENCES = 4
MAX_REQUEST_CONTENT_BYTES = 1024 * 1024
# The gRPC receive limit is the content cap plus room for roles, names, config and framing, so that a
# request just over the content cap gets our clear INVALID_ARGUMENT rather than gRPC's RESOURCE_EXHAUSTED.
MAX_MESSAGE_OVERHEAD_BYTES = 64 * 1024

# Upstream HTTP (one pooled httpx.AsyncClient per provider).
CONNECT_TIMEOUT_S = 5.0
# Read timeout is the longest silence allowed between two reads: a slow first token must fit inside it.
READ_TIMEOUT_S = 120.0
WRITE_TIMEOUT_S = 10.0
POOL_TIMEOUT_S = 5.0
# Upstream timeouts end this much before the client's gRPC deadline, so the gateway answers first.
# The margin is a share of what is left (10 %), at least DEADLINE_MARGIN_S and at most DEADLINE_MARGIN_MAX_S.
DEADLINE_MARGIN_S = 0.02
DEADLINE_MARGIN_SHARE = 0.1
DEADLINE_MARGIN_MAX_S = 1.0
# Upper bound of a whole upstream call when the client sets no gRPC deadline.
REQUEST_TIMEOUT_S = 600.0
POOL_MAX_CONNECTIONS = 512
POOL_MAX_KEEPALIVE = 128

# Graceful shutdown: how long in-flight calls may run after SIGTERM/SIGINT.
GRACE_PERIOD_S = 10.0
# Calls still running this long before the grace period ends are ended with SHUTTING_DOWN details.
SHUTDOWN_ABORT_LEAD_S = 0.2

# InteractiveStream sessions (config key `interactive`).
# Pipeline: the default and the cap of SessionStart.max_in_flight (a conversation runs one turn at a time).
INTERACTIVE_MAX_IN_FLIGHT = 16
# Turns accepted but not yet started; with this many waiting, the server stops reading the client's
# messages until one starts (HTTP/2 flow control then pushes back on the client's writes).
INTERACTIVE_MAX_QUEUED_TURNS = 128
# Outgoing messages buffered per session; when full, turns stop reading from their upstreams.
INTERACTIVE_QUEUE_SIZE = 64
# A conversation's history (every message after the system prompt); the oldest are dropped to fit.
INTERACTIVE_MAX_HISTORY_MESSAGES = 200
INTERACTIVE_MAX_HISTORY_BYTES = 512 * 1024
# How many finished request_ids a session remembers to recognise their reuse (live ones are always known).
INTERACTIVE_REMEMBERED_IDS = 1024
INTERACTIVE_MAX_REQUEST_ID_BYTES = 128
