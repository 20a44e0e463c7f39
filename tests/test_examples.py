"""The example configs in examples/ load as documented, so the README's copy-and-trim advice holds.

The TLS files they name are checked when a config loads, so each example is loaded from a copy beside
the certificates it expects (those `make certs` writes for secure.yaml).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from server.config import load_config
from tests.certs import make_certs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_full_example_loads_with_its_variables_set(tmp_path: Path) -> None:
    make_certs(tmp_path)
    path = tmp_path / "gateway.yaml"
    path.write_text((EXAMPLES / "gateway.yaml").read_text().replace("/etc/gateway/", f"{tmp_path}/"))
    env = {"OPENAI_API_KEY": "sk-example-0123456789", "SEARCH_SERVICE_TOKEN": "search-token-0123456789"}

    config = load_config(path, env=env)

    assert config.auth is not None
    assert [t.name for t in config.auth.tokens] == ["billing-service", "search-service"]
    assert {p.name for p in config.providers} >= {"openai", "demo"}
    assert "demo" in {m.name for m in config.models}


def test_the_secure_example_serves_the_demo_over_tls(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "dev" / "tls").mkdir(parents=True)
    make_certs(tmp_path / "dev" / "tls")
    path = Path(shutil.copy(EXAMPLES / "secure.yaml", tmp_path / "examples"))

    config = load_config(path, env={"GATEWAY_CLIENT_TOKEN": "dev-token-0123456789"})

    assert config.listen == "127.0.0.1:50052"
    assert config.tls is not None
    assert config.tls.cert_file == (tmp_path / "examples" / "../dev/tls/server.crt")
    assert [m.name for m in config.models] == ["demo"]
