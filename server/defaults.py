"""Every default number of the gateway, in one place. Config files and the environment override them."""

from __future__ import annotations

__all__ = [
    "BREAKER_CONSECUTIVE_FAILURES",
    "BREAKER_COOLDOWN_S",
    "BREAKER_FAILURE_RATIO",
    "BREAKER_MIN_REQUESTS",
    "BREAKER_WINDOW_S",
    "CONNECT_TIMEOUT_S",
    "DEADLINE_MARGIN_MAX_S",
    "DEADLINE_MARGIN_S",
    "DEADLINE_MARGIN_SHARE",
    "DEFAULT_LISTEN",
    "ERROR_DOMAIN",
    "FIRST_TOKEN_TIMEOUT_S",
    "GRACE_PERIOD_S",
    "INTERACTIVE_MAX_HISTORY_BYTES",
    "INTERACTIVE_MAX_HISTORY_MESSAGES",
    "INTERACTIVE_MAX_IN_FLIGHT",
    "INTERACTIVE_MAX_QUEUED_TURNS",
    "INTERACTIVE_MAX_REQUEST_ID_BYTES",
    "INTERACTIVE_QUEUE_SIZE",
    "INTERACTIVE_REMEMBERED_IDS",
    "KEEPALIVE_MIN_CLIENT_PING_INTERVAL_S",
    "KEEPALIVE_TIMEOUT_S",
    "KEEPALIVE_TIME_S",
    "MAX_CONCURRENT_UPSTREAM",
    "MAX_MESSAGE_OVERHEAD_BYTES",
    "MAX_REQUEST_CONTENT_BYTES",
    "MAX_RESUMES",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_LIMIT",
    "MAX_WORKERS",
    "OVERLOAD_RETRY_AFTER_S",
    "POOL_MAX_CONNECTIONS",
    "POOL_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "RETRY_AFTER_CAP_S",
    "RETRY_BACKOFF_BASE_S",
    "RETRY_BACKOFF_CAP_S",
    "RETRY_BUDGET_RATIO",
    "RETRY_BUDGET_RESERVE",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_MIN_REMAINING_S",
    "SHUTDOWN_ABORT_LEAD_S",
    "STREAM_IDLE_TIMEOUT_S",
    "TRACE_FLUSH_TIMEOUT_S",
    "WORKER_EXIT_MARGIN_S",
    "WORKER_MAX_QUICK_RESTARTS",
    "WORKER_RESTART_BACKOFF_BASE_S",
    "WORKER_RESTART_BACKOFF_CAP_S",
    "WORKER_STABLE_S",
    "WORKER_START_TIMEOUT_S",
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

# Upstream HTTP (one pooled transport per provider, server/providers/transport.py).
CONNECT_TIMEOUT_S = 5.0
# Read timeout is the longest silence allowed between two reads: a slow first token must fit inside it.
READ_TIMEOUT_S = 120.0
# The longest wait for a pooled or new connection (connecting included).
POOL_TIMEOUT_S = 5.0
# Upstream timeouts end this much before the client's gRPC deadline, so the gateway answers first.
# The margin is a share of what is left (10 %), at least DEADLINE_MARGIN_S and at most DEADLINE_MARGIN_MAX_S.
DEADLINE_MARGIN_S = 0.02
DEADLINE_MARGIN_SHARE = 0.1
DEADLINE_MARGIN_MAX_S = 1.0
# Without a gRPC deadline: how long a call may keep retrying and falling back, and the cap of each upstream
# phase's timeout. (It does not end a stream that is still delivering tokens.)
REQUEST_TIMEOUT_S = 600.0
POOL_MAX_CONNECTIONS = 512

# Graceful shutdown: how long in-flight calls may run after SIGTERM/SIGINT.
GRACE_PERIOD_S = 10.0
# Calls still running this long before the grace period ends are ended with SHUTTING_DOWN details.
SHUTDOWN_ABORT_LEAD_S = 0.2
# On the way out, the longest wait for the buffered trace spans to reach the collector; the rest is dropped.
TRACE_FLUSH_TIMEOUT_S = 2.0

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

# Retries before the first token (server/resilience/retry.py). Attempts are per model: its deployments
# share them, and each fallback model gets as many again.
RETRY_MAX_ATTEMPTS = 3
# Full-jitter exponential backoff: a wait drawn from [0, min(cap, base * 2 ** (failures - 1))].
RETRY_BACKOFF_BASE_S = 0.25
RETRY_BACKOFF_CAP_S = 4.0
# A Retry-After up to this long is waited for; a longer one takes the deployment out of the call.
RETRY_AFTER_CAP_S = 10.0
# Retry budget per provider: retries may add this share to its first attempts, plus a reserve for quiet times.
RETRY_BUDGET_RATIO = 0.2
RETRY_BUDGET_RESERVE = 10.0
# A retry is not started with less than this left of the call's deadline.
RETRY_MIN_REMAINING_S = 0.05

# Circuit breaker per deployment: opens after this many failing calls in a row (a call counts once, however
# many attempts it made), or when more than BREAKER_FAILURE_RATIO of at least BREAKER_MIN_REQUESTS calls in
# the window failed (at 5 % of 50 calls that takes 3 failures); lets one probe through after the cooldown.
BREAKER_CONSECUTIVE_FAILURES = 10
BREAKER_FAILURE_RATIO = 0.05
BREAKER_MIN_REQUESTS = 50
BREAKER_WINDOW_S = 60.0
BREAKER_COOLDOWN_S = 30.0

# Streams: the longest wait for the first token (a reasoning model may think for minutes), and the longest
# silence between two events after it. Both are distinct from the client's deadline.
FIRST_TOKEN_TIMEOUT_S = 120.0
STREAM_IDLE_TIMEOUT_S = 60.0
# How many times one stream with `resume: continue` may be resumed after failing mid-way.
MAX_RESUMES = 1

# Overload: upstream calls in flight per process (per provider the default is its max_connections), and
# the RetryInfo delay of a call refused for being over a limit.
MAX_CONCURRENT_UPSTREAM = 1024
OVERLOAD_RETRY_AFTER_S = 1.0

# HTTP/2 keepalive of the gRPC server: ping idle connections every KEEPALIVE_TIME_S, drop them when a ping
# is not answered within KEEPALIVE_TIMEOUT_S; accept client pings this often, with or without calls.
KEEPALIVE_TIME_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0
KEEPALIVE_MIN_CLIENT_PING_INTERVAL_S = 5.0

# Worker processes (`workers:`, server/workers.py). More than this is a typo, not a plan.
MAX_WORKERS = 256
# A worker that dies within WORKER_STABLE_S of being ready (or before it is ready) died quickly; its
# replacement waits 0 s after the first quick death, then BASE, 2 x BASE ... up to CAP; after
# WORKER_MAX_QUICK_RESTARTS quick deaths in a row the supervisor gives up and stops the gateway.
WORKER_STABLE_S = 30.0
WORKER_RESTART_BACKOFF_BASE_S = 0.1
WORKER_RESTART_BACKOFF_CAP_S = 5.0
WORKER_MAX_QUICK_RESTARTS = 5
# A worker not ready this long after it was started is killed (and counts as a quick death).
WORKER_START_TIMEOUT_S = 60.0
# On SIGTERM, workers get the grace period plus this (their spans flush, their sockets close) before
# the supervisor kills them.
WORKER_EXIT_MARGIN_S = 10.0
