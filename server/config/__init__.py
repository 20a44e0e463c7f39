"""Gateway configuration: the typed config (load.py), its YAML readers and checks, and the LiteLLM import.

`from server.config import GatewayConfig, load_config` is the public face; the modules behind it are:

    load.py            the config types, the YAML file, environment overrides, the embedded default
    models.py          one catalog model entry (deployments, prices, fallbacks)
    readers.py         small readers that collect problems instead of raising on the first
    litellm_import.py  `python -m server.config.litellm_import`: a LiteLLM proxy config to ours
"""

from server.config.load import (
    AuthConfig,
    ClientToken,
    ConfigError,
    Deployment,
    GatewayConfig,
    InteractiveConfig,
    KeepaliveConfig,
    LimitsConfig,
    MetricsConfig,
    ModelConfig,
    Price,
    ProviderConfig,
    TLSConfig,
    default_config,
    is_loopback_host,
    load_config,
    parse_listen,
)

__all__ = [
    "AuthConfig",
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
    "TLSConfig",
    "default_config",
    "is_loopback_host",
    "load_config",
    "parse_listen",
]
