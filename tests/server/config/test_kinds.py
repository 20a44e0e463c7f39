"""The provider kinds are listed once (server.config.PROVIDER_KINDS); the config check and the adapters follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import PROVIDER_KINDS, ConfigError, load_config
from server.providers import build_provider


@pytest.mark.parametrize("kind", PROVIDER_KINDS)
async def test_every_kind_is_accepted_by_the_config_and_built_into_an_adapter(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"providers: [{{name: p, kind: {kind}, base_url: 'http://127.0.0.1:9'}}]\nmodels: [{{name: m, provider: p}}]\n"
    )

    (provider,) = load_config(path, env={}).providers

    assert provider.kind == kind
    adapter = build_provider(provider)
    await adapter.aclose()
    assert adapter.name == "p"


def test_an_unknown_kind_is_refused_naming_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("providers: [{name: p, kind: bedrock}]\nmodels: [{name: m, provider: p}]\n")

    with pytest.raises(ConfigError) as error:
        load_config(path, env={})

    assert str(error.value) == f"providers[0].kind: expected one of {', '.join(PROVIDER_KINDS)}, got 'bedrock'"
