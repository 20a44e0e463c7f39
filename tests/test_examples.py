"""The example configs in examples/ load as documented, so the README's copy-and-trim advice holds."""

from __future__ import annotations

from pathlib import Path

from server.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_full_example_loads_with_its_variables_set() -> None:
    env = {"OPENAI_API_KEY": "sk-example-0123456789", "SEARCH_SERVICE_TOKEN": "search-token-0123456789"}
    config = load_config(EXAMPLES / "gateway.yaml", env=env)
    assert config.auth is not None
    assert [t.name for t in config.auth.tokens] == ["billing-service", "search-service"]
    assert {p.name for p in config.providers} >= {"openai", "demo"}
    assert "demo" in {m.name for m in config.models}
    assert config.metrics.listen == "127.0.0.1:9464"


def test_the_secure_example_serves_the_demo_over_tls() -> None:
    config = load_config(EXAMPLES / "secure.yaml", env={"GATEWAY_CLIENT_TOKEN": "dev-token-0123456789"})
    assert config.listen == "127.0.0.1:50052"
    assert config.tls is not None
    assert config.tls.cert_file == (EXAMPLES / "../dev/tls/server.crt")
    assert [m.name for m in config.models] == ["demo"]
