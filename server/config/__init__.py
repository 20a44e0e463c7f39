"""Gateway configuration: the typed config, read from YAML, the environment or the embedded default.

`from server.config import GatewayConfig, load_config` is the public face; the modules behind it are:

    schema.py          the config types, one frozen dataclass per section, and the provider kinds
    load.py            the YAML file, environment overrides, the embedded default
    parse.py           the YAML document read into the config types, section by section
    models.py          one catalog model entry (deployments, prices, fallbacks)
    clients.py         the `clients` entries (credentials, allowed models, limits) and `client_defaults`
    checks.py          the cross-field checks (names, references, listen without auth, resilience settings)
    readers.py         small readers that collect problems instead of raising on the first
    litellm_import.py  `python -m server.config.litellm_import`: a LiteLLM proxy config to ours
"""

from server.config.checks import is_loopback_host, parse_listen
from server.config.load import default_config, load_config
from server.config.schema import (
    PROVIDER_KINDS,
    TRANSPORTS,
    ApiKey,
    AuthConfig,
    ClientConfig,
    ClientDefaults,
    ClientLimits,
    ClientToken,
    ConfigError,
    GatewayConfig,
    InteractiveConfig,
    KeepaliveConfig,
    LimitsConfig,
    MetricsConfig,
    ProviderConfig,
    ProviderKind,
    TLSConfig,
    TransportName,
)
from server.routing.catalog import Deployment, ModelConfig, Price

__all__ = [
    "PROVIDER_KINDS",
    "TRANSPORTS",
    "ApiKey",
    "AuthConfig",
    "ClientConfig",
    "ClientDefaults",
    "ClientLimits",
    "ClientToken",
    "ConfigError",
    "Deployment",
    "GatewayConfig",
    "InteractiveConfig",
    "KeepaliveConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ModelConfig",
    "Price",
    "ProviderConfig",
    "ProviderKind",
    "TLSConfig",
    "TransportName",
    "default_config",
    "is_loopback_host",
    "load_config",
    "parse_listen",
]
