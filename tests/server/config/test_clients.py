"""The `clients` and `client_defaults` sections: what they read into, and every problem they can have."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from server.config import ClientConfig, ClientDefaults, ClientLimits, ConfigError, load_config
from server.errors import scrub
from tests.certs import make_certs

TOKEN = "search-token-0123456789"
HEX = hashlib.sha256(b"retired-token").hexdigest()
OTHER_HEX = hashlib.sha256(b"support-token").hexdigest().upper()

BASE = """
providers:
  - {name: demo, kind: demo}
  - {name: anthropic, kind: anthropic, base_url: "https://api.anthropic.com", api_key_env: ANTHROPIC_KEY}
models:
  - {name: demo, provider: demo, aliases: [echo]}
aliases:
  simple: demo
"""
ENV = {"SEARCH_TOKEN": TOKEN, "ANTHROPIC_KEY": "sk-ant-0123456789"}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + textwrap.dedent(text))
    return load_config(path, env=ENV if env is None else env)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    return str(error.value).splitlines()


def test_clients_and_defaults_are_read(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""
        clients:
          - name: search
            tokens: [{{env: SEARCH_TOKEN}}, {{sha256: {HEX}}}]
            models: [demo, simple, "anthropic/*"]
            limits: {{requests_per_minute: 600, tokens_per_minute: 1000, concurrent_streams: 4,
                      budget_usd_per_day: 2.5, budget_usd_per_month: 40}}
          - name: support
            tokens: [{{sha256: {OTHER_HEX}}}]  # hex digits in either case
        client_defaults:
          models: [echo]
          limits: {{requests_per_minute: 60}}
        """,
        {**ENV},
    )

    search, support = config.clients  # type: ignore[attr-defined]
    assert search == ClientConfig(
        "search",
        tokens=(hashlib.sha256(TOKEN.encode()).digest(), bytes.fromhex(HEX)),
        models=("demo", "simple", "anthropic/*"),
        limits=ClientLimits(600, 1000, 4, 2.5, 40.0),
    )
    assert support.models is None
    assert support.limits.over(config.client_defaults.limits) == ClientLimits(requests_per_minute=60)  # type: ignore[attr-defined]
    assert config.client_defaults == ClientDefaults(models=("echo",), limits=ClientLimits(60))  # type: ignore[attr-defined]
    assert config.authenticates  # type: ignore[attr-defined]
    assert scrub(f"token {TOKEN}") == "token [REDACTED]"  # a token read from the environment is a secret


def test_credentials_are_the_same_client_twice_at_most_and_certificates_need_a_client_ca(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        f"""
        auth:
          tokens: [{{name: search, sha256: {HEX}}}]
        clients:
          - name: search
            tokens: [{{sha256: {HEX}}}]
          - name: other
            tokens: [{{sha256: {HEX}}}]
            certificates: [other.internal]
          - name: other
            certificates: [other.internal]
        """,
    ) == [
        "clients: name 'other' is used more than once",
        "clients: name 'search' is also an auth.tokens name: give its tokens in its clients entry",
        "clients: a token of 'other' is also one of 'search': a credential names one client",
        "clients: 'other' has certificates, which need tls.client_ca_file (mTLS)",
        "clients: 'other' has certificates, which need tls.client_ca_file (mTLS)",
    ]


def test_every_entry_problem_is_listed(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        """
        clients:
          - name: "bad name"
          - name: nocreds
          - name: a
            tokens: [{sha256: abc}, {env: NOPE}, {sha256: x, env: y}, {hash: x}]
            certificates: ["", "has space"]
            models: [nope, "openai/*", 3]
            limits: {requests_per_minute: 0, tokens_per_minute: 1.5, concurrent_streams: x,
                     budget_usd_per_day: -1, burst: 2}
        client_defaults:
          models: [missing]
          limits: {budget_usd_per_month: lots}
          colour: red
        """,
    ) == [
        "clients[0].name: required: 1 to 64 letters, digits, '.', '_' or '-', got 'bad name'",
        "clients[1]: give the client tokens, certificates or both: it has no way to prove who it is",
        "clients[2].tokens[0].sha256: expected 64 hex characters (sha256 of the token)",
        "clients[2].tokens[1].env: environment variable NOPE is not set or empty",
        "clients[2].tokens[2]: give exactly one of sha256 (hex digest of the token) or env",
        "clients[2].tokens[3].hash: unknown key (known: env, sha256)",
        "clients[2].tokens[3]: give exactly one of sha256 (hex digest of the token) or env",
        "clients[2].certificates[0]: expected a certificate's CN or SAN (DNS name, URI, e-mail), got ''",
        "clients[2].certificates[1]: expected a certificate's CN or SAN (DNS name, URI, e-mail), got 'has space'",
        "clients[2].models[2]: expected a model name, an alias, provider/* or *, got 3",
        "clients[2].limits.burst: unknown key (known: budget_usd_per_day, budget_usd_per_month, "
        "concurrent_streams, requests_per_minute, tokens_per_minute)",
        "clients[2].limits.requests_per_minute: must be at least 1",
        "clients[2].limits.tokens_per_minute: expected a whole number, got 1.5",
        "clients[2].limits.concurrent_streams: expected a number, got 'x'",
        "clients[2].limits.budget_usd_per_day: must be at least 0",
        "client_defaults.colour: unknown key (known: limits, models)",
        "client_defaults.limits.budget_usd_per_month: expected a number, got 'lots'",
        "client_defaults.models: 'missing' is not a model",
        "clients: 'a' models: 'nope' is not a model",
        "clients: 'a' models: 'openai/*' names no configured provider",
    ]


def test_certificates_with_a_client_ca(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    files = make_certs(tmp_path / "certs")
    config = load(
        tmp_path,
        f"""
        listen: 0.0.0.0:50051
        tls: {{cert_file: {files.server_cert}, key_file: {files.server_key}, client_ca_file: certs/ca.crt}}
        clients:
          - name: search
            certificates: [search.internal, "spiffe://corp/search"]
        """,
    )

    assert config.tls.client_ca_file == tmp_path / "certs" / "ca.crt"  # type: ignore[attr-defined]
    assert config.clients[0].certificates == ("search.internal", "spiffe://corp/search")  # type: ignore[attr-defined]


def test_a_client_ca_that_is_no_certificate_is_named(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    files = make_certs(tmp_path / "certs")
    assert problems(
        tmp_path,
        f"""
        tls: {{cert_file: {files.server_cert}, key_file: {files.server_key}, client_ca_file: {files.server_key}}}
        """,
    ) == [f'tls.client_ca_file: {files.server_key}: not a PEM certificate (no "-----BEGIN CERTIFICATE-----" line)']
