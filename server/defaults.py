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
    "MAX_EMBED_DIMENSIONS",
    "MAX_EMBED_TEXTS",
    "MAX_EMBED_TEXT_BYTES",
    "MAX_ERROR_BODY_BYTES",
    "MAX_MESSAGE_OVERHEAD_BYTES",
    "MAX_MODEL_NAME_CHARS",
    "MAX_PASSTHROUGH_BREAKERS",
    "MAX_PENDING_CALLS",
    "MAX_REQUEST_CONTENT_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_RESUMES",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_LIMIT",
    "MAX_TOOLS",
    "MAX_TOOL_CALLS_PER_MESSAGE",
    "MAX_VECTOR_LENGTH",
    "MAX_WORKERS",
    "OVERLOAD_RETRY_AFTER_S",
    "POOL_MAX_CONNECTIONS",
    "POOL_MAX_IDLE_CONNECTIONS",
    "POOL_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "RETRY_AFTER_CAP_S",
    "RETRY_AFTER_MAX_S",
    "RETRY_BACKOFF_BASE_S",
    "RETRY_BACKOFF_CAP_S",
    "RETRY_BUDGET_RATIO",
    "RETRY_BUDGET_RESERVE",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_MIN_REMAINING_S",
    "SHADOW_MAX_COMPARED_WORDS",
    "SHADOW_MAX_CONCURRENT",
    "SHUTDOWN_ABORT_LEAD_S",
    "STREAM_IDLE_TIMEOUT_S",
    "TRACE_FLUSH_TIMEOUT_S",
    "UPSTREAM_READ_BUFFER_BYTES",
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
# Tools and structured output: what the providers accept (OpenAI: 128 tools, names of 64 [a-zA-Z0-9_-]),
# and bounds on the JSON Schemas the gateway parses and checks.
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_TOOL_CALLS_PER_MESSAGE = 128
# The longest model name a request may carry (real ones, Bedrock ARNs included, stay well under it).
MAX_MODEL_NAME_CHARS = 256
MAX_REQUEST_CONTENT_BYTES = 1024 * 1024
# Embed: at most this many texts a call (OpenAI's limit per request), each at most this many UTF-8 bytes
# (more than any provider's 8,192-token input), and all of them within MAX_REQUEST_CONTENT_BYTES (or the
# config's max_request_bytes); `dimensions` at most MAX_EMBED_DIMENSIONS (OpenAI's text-embedding-3-large
# has 3,072). A vector an upstream returns may be at most MAX_VECTOR_LENGTH long.
MAX_EMBED_TEXTS = 2048
MAX_EMBED_TEXT_BYTES = 64 * 1024
MAX_EMBED_DIMENSIONS = 4096
MAX_VECTOR_LENGTH = 8192
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
# Idle keep-alive connections kept per provider (at most max_connections): after a burst the rest are closed.
POOL_MAX_IDLE_CONNECTIONS = 128
# The most of a whole (Generate) answer's body read from an upstream: far above any real completion (32,000
# tokens of JSON are well under 1 MiB), and what a hostile upstream can make one call hold.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Error bodies are read only to learn the error type: this much of one, as it came on the wire.
MAX_ERROR_BODY_BYTES = 64 * 1024
# What the transport buffers of an upstream's answer before it stops reading the socket (per connection):
# with a client that stops reading, a stream holds about this much twice over, plus the kernel's buffers.
UPSTREAM_READ_BUFFER_BYTES = 64 * 1024

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
# An upstream's Retry-After (or retry-after-ms) is clamped to a day; one that is not a finite number is ignored.
RETRY_AFTER_MAX_S = 86_400.0
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
# Breakers of "provider/anything" pass-through names are kept for the most recently used this many; the
# catalog's own deployments always keep theirs. A client that invents names cannot grow them past it.
MAX_PASSTHROUGH_BREAKERS = 1024

# Streams: the longest wait for the first token (a reasoning model may think for minutes), and the longest
# silence between two events after it. Both are distinct from the client's deadline.
FIRST_TOKEN_TIMEOUT_S = 120.0
STREAM_IDLE_TIMEOUT_S = 60.0
# How many times one stream with `resume: continue` may be resumed after failing mid-way.
MAX_RESUMES = 1

# Overload: upstream calls in flight per process (per provider the default is its max_connections), and
# the RetryInfo delay of a call refused for being over a limit.
MAX_CONCURRENT_UPSTREAM = 1024
# Calls gRPC holds before the gateway takes them (a burst arrives faster than the event loop takes it).
# gRPC's own default (randomly from 1,000, all from 3,000) cancels the rest with a bare CANCELLED before the
# gateway sees them; this many wait instead, and the gateway answers each (GATEWAY_OVERLOADED when over
# its limit). A waiting call costs gRPC a few KiB.
MAX_PENDING_CALLS = 20_000
OVERLOAD_RETRY_AFTER_S = 1.0
# Over the limit of calls in flight, a call waits at most this long for a slot (never past its deadline).
QUEUE_WAIT_S = 2.0
# How often a gateway started with --config looks at the file for a change to reload.
CONFIG_POLL_S = 1.0
# A key of a provider's pool answered 429 rests this long when the upstream gives no Retry-After, and never
# longer than the cap whatever it gives.
KEY_REST_S = 5.0
KEY_REST_MAX_S = 300.0
# The longest a call waits on the shared limits store (Redis) before limits.backend_unavailable decides.
LIMITS_BACKEND_TIMEOUT_S = 0.25

# HTTP/2 keepalive of the gRPC server: ping idle connections every KEEPALIVE_TIME_S, drop them when a ping
# is not answered within KEEPALIVE_TIMEOUT_S; accept client pings this often, with or without calls.
KEEPALIVE_TIME_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0
KEEPALIVE_MIN_CLIENT_PING_INTERVAL_S = 5.0

# Shadow traffic (a model's `shadow:`): shadow calls of one model in flight at once (more are dropped and
# counted), and how many words of each answer the text difference compares (linear in it: about 1 ms at
# this size on a loaded 2-core machine, on the event loop, once per shadow call).
SHADOW_MAX_CONCURRENT = 8
SHADOW_MAX_COMPARED_WORDS = 256
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
