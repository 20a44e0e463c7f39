"""The typed gateway configuration: frozen value objects, one per config section, and the provider kinds.

`GatewayConfig` is what the rest of the server reads; `parse.py` builds it from YAML, `load.py` from a file,
the environment and the embedded default, and `checks.py` holds the rules that span several fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeGuard, get_args

from server import defaults
from server.resilience.breaker import BreakerPolicy
from server.resilience.retry import RetryPolicy
from server.routing.catalog import ModelConfig

__all__ = [
    "OFFLINE_KINDS",
    "PROVIDER_KINDS",
    "TRANSPORTS",
    "ApiKey",
    "AuthConfig",
    "ClientConfig",
    "ClientDefaults",
    "ClientLimits",
    "ClientToken",
    "ConfigError",
    "GatewayConfig",
    "InteractiveConfig",
    "KeepaliveConfig",
    "LimitsConfig",
    "ProviderConfig",
    "ProviderKind",
    "TLSConfig",
    "TransportName",
    "is_provider_kind",
]

# The wire formats the gateway speaks: the one list of them. The config check reads PROVIDER_KINDS, and
# providers/__init__.py's build_provider matches on ProviderKind, so mypy flags a kind left without an adapter.
ProviderKind = Literal["openai", "anthropic", "gemini", "demo"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = get_args(ProviderKind)
# Kinds that call no upstream, so need no base_url and no key.
OFFLINE_KINDS: frozenset[ProviderKind] = frozenset({"demo"})


# The HTTP clients a provider's calls can go through (providers/transport.py, providers/httpx_transport.py);
# the first is the default.
TransportName = Literal["aiohttp", "httpx"]
TRANSPORTS: tuple[TransportName, ...] = get_args(TransportName)


def is_provider_kind(kind: str) -> TypeGuard[ProviderKind]:
    return kind in PROVIDER_KINDS


class ConfigError(ValueError):
    """The configuration is invalid. The message lists every problem, one per line."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    # mTLS: when set, every connection must present a client certificate this CA signed (README: Clients,
    # limits and budgets); a certificate's subject CN or SAN can then name a client (`clients[].certificates`).
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ClientToken:
    """A client allowed to call the gateway. Only the sha256 digest of its token is kept."""

    name: str
    sha256: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    tokens: tuple[ClientToken, ...]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One upstream key and the environment variable it was read from (its only printable name)."""

    env: str
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """A client's limits (config `clients[].limits`, `client_defaults.limits`); None is "no limit"."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_streams: int | None = None
    budget_usd_per_day: float | None = None
    budget_usd_per_month: float | None = None

    def over(self, defaults: ClientLimits) -> ClientLimits:
        """These limits, each one left unset taken from `defaults`."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return replace(defaults, **{name: value for name, value in values.items() if value is not None})


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A named client (config `clients[]`): its credentials, the models it may call and its limits.

    `tokens` are sha256 digests (several at once: a rotation's overlap); `certificates` are names a
    verified mTLS client certificate may carry (its subject CN, or a DNS, URI or e-mail SAN). `models`
    None means `client_defaults.models`; each limit left unset is `client_defaults.limits`'.
    """

    name: str
    tokens: tuple[bytes, ...] = field(default=(), repr=False)
    certificates: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None
    limits: ClientLimits = ClientLimits()


@dataclass(frozen=True, slots=True)
class ClientDefaults:
    """What a client gets for what it leaves out (config `client_defaults`): every model and no limits,
    unless set here. Clients of `auth.tokens` get exactly this."""

    models: tuple[str, ...] = ("*",)
    limits: ClientLimits = ClientLimits()


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: ProviderKind
    base_url: str = ""
    api_key_env: str = ""
    # The key itself, read from `api_key_env`; empty for keyless upstreams (local servers, demo).
    api_key: str = field(default="", repr=False)
    # More keys after the first (`api_key_env` given as a list): the provider uses them all in turn.
    extra_api_keys: tuple[ApiKey, ...] = ()
    # Upstreams that require signed requests: the HMAC secret, read from `signing_secret_env`.
    signing_secret_env: str = ""
    signing_secret: str = field(default="", repr=False)
    connect_timeout_s: float = defaults.CONNECT_TIMEOUT_S
    read_timeout_s: float = defaults.READ_TIMEOUT_S
    max_connections: int = defaults.POOL_MAX_CONNECTIONS
    # Upstream calls in flight at once; 0 means max_connections. Over it, calls go elsewhere or are refused.
    max_concurrent_streams: int = 0
    # Streams only: the longest wait for the first token, and the longest silence between events after it.
    first_token_timeout_s: float = defaults.FIRST_TOKEN_TIMEOUT_S
    stream_idle_timeout_s: float = defaults.STREAM_IDLE_TIMEOUT_S
    # The HTTP client that carries the calls: aiohttp (faster) or httpx.
    transport: TransportName = "aiohttp"
    # The most of a whole (Generate) answer read; a longer one is UPSTREAM_BAD_RESPONSE.
    max_response_bytes: int = defaults.MAX_RESPONSE_BYTES
    # aiohttp only: what a connection buffers of an answer not yet read (about twice this, then it waits).
    read_buffer_bytes: int = defaults.UPSTREAM_READ_BUFFER_BYTES


@dataclass(frozen=True, slots=True)
class InteractiveConfig:
    """Limits of InteractiveStream sessions (config key `interactive`); see defaults.py for each one."""

    max_in_flight: int = defaults.INTERACTIVE_MAX_IN_FLIGHT
    max_queued_turns: int = defaults.INTERACTIVE_MAX_QUEUED_TURNS
    queue_size: int = defaults.INTERACTIVE_QUEUE_SIZE
    max_history_messages: int = defaults.INTERACTIVE_MAX_HISTORY_MESSAGES
    max_history_bytes: int = defaults.INTERACTIVE_MAX_HISTORY_BYTES


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Load shedding (config key `limits`): calls in flight per process, how long a call may wait for a slot
    (server/policy/fair_queue.py; 0: refused at once), the RetryInfo delay of a call refused for being over
    a limit, and the calls gRPC may hold before the gateway takes them."""

    max_concurrent_upstream: int = defaults.MAX_CONCURRENT_UPSTREAM
    retry_after_s: float = defaults.OVERLOAD_RETRY_AFTER_S
    queue_wait_s: float = defaults.QUEUE_WAIT_S
    max_pending_calls: int = defaults.MAX_PENDING_CALLS
    # Where clients' counters and budgets live: "memory" (this process), or a redis:// (rediss://, unix://)
    # URL shared by every instance; what to do when it does not answer within backend_timeout_s.
    backend: str = "memory"
    backend_unavailable: str = "closed"
    backend_timeout_s: float = defaults.LIMITS_BACKEND_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """HTTP/2 keepalive and connection age of the gRPC server (config key `keepalive`); None is off."""

    time_s: float = defaults.KEEPALIVE_TIME_S
    timeout_s: float = defaults.KEEPALIVE_TIMEOUT_S
    min_client_ping_interval_s: float = defaults.KEEPALIVE_MIN_CLIENT_PING_INTERVAL_S
    max_connection_age_s: float | None = None
    max_connection_age_grace_s: float | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint (config key `metrics`): `/metrics` on its own HTTP listener; None is off."""

    listen: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: str = defaults.DEFAULT_LISTEN
    tls: TLSConfig | None = None
    auth: AuthConfig | None = None
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    # Extra names for catalog models (including tier names such as "simple" or "advanced").
    aliases: tuple[tuple[str, str], ...] = ()
    grace_period_s: float = defaults.GRACE_PERIOD_S
    max_request_bytes: int = defaults.MAX_REQUEST_CONTENT_BYTES
    log_level: str = "INFO"
    log_format: str = "text"  # or "json" (config `log.format`)
    interactive: InteractiveConfig = InteractiveConfig()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    circuit_breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    limits: LimitsConfig = LimitsConfig()
    keepalive: KeepaliveConfig = KeepaliveConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Worker processes sharing `listen` (server/workers.py); 1 is one process with no supervisor.
    workers: int = 1
    clients: tuple[ClientConfig, ...] = ()
    client_defaults: ClientDefaults = ClientDefaults()

    @property
    def authenticates(self) -> bool:
        """Whether every AIService call must prove a client: `auth.tokens` or `clients` are configured."""
        return self.auth is not None or bool(self.clients)
