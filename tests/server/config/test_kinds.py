"""The provider kinds and transports are listed once (server.config.PROVIDER_KINDS, TRANSPORTS); the config check
and the adapters follow them."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import PROVIDER_KINDS, TRANSPORTS, ConfigError, load_config
from server.providers import build_provider
from server.providers.http import make_transport
from server.providers.httpx_transport import HttpxTransport
from server.providers.transport import AiohttpTransport, Transport


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


@pytest.mark.parametrize(
    ("line", "transport", "cls"),
    [
        ("", "aiohttp", AiohttpTransport),  # the default: the faster one
        (", transport: aiohttp", "aiohttp", AiohttpTransport),
        (", transport: httpx", "httpx", HttpxTransport),
    ],
)
async def test_a_provider_goes_through_the_transport_it_names(
    tmp_path: Path, line: str, transport: str, cls: type[Transport]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"providers: [{{name: p, kind: openai, base_url: 'http://127.0.0.1:9'{line}}}]\n"
        "models: [{name: m, provider: p}]\n"
    )

    (provider,) = load_config(path, env={}).providers

    assert provider.transport == transport
    made = make_transport(provider, {})
    await made.aclose()
    assert type(made) is cls


def test_an_unknown_transport_is_refused_with_the_entrys_other_problems(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers: [{name: p, kind: openai, base_url: 'http://127.0.0.1:9', transport: curl, transprot: httpx}]\n"
        "models: [{name: m, provider: p}]\n"
    )

    with pytest.raises(ConfigError) as error:
        load_config(path, env={})

    assert str(error.value).splitlines() == [
        "providers[0].transprot: unknown key (known: api_key_env, api_key_file, base_url, connect_timeout_s, "
        "first_token_timeout_s, kind, max_concurrent_streams, max_connections, max_response_bytes, name, "
        "read_buffer_bytes, read_timeout_s, signing_secret_env, stream_idle_timeout_s, transport)",
        f"providers[0].transport: expected one of {', '.join(TRANSPORTS)}, got 'curl'",
    ]
