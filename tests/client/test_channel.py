"""Connection settings: loopback detection, environment fallbacks, option checks, token hiding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client import AIClient, AsyncAIClient
from client.channel import BearerToken, ConnectionSettings, is_loopback_target
from client.errors import ConfigurationError

TOKEN = "secret-token-0123456789"


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:50051", True),
        ("localhost:50051", True),
        ("LOCALHOST", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:50051", True),
        ("ipv6:[::1]:50051", True),
        ("10.0.0.1:50051", False),
        ("0.0.0.0:50051", False),
        ("gateway.example.com:443", False),
        ("localhost.example.com:443", False),
        ("[2001:db8::1]:50051", False),
        ("unix:/tmp/gateway.sock", False),
    ],
)
def test_is_loopback_target(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def resolve(env: dict[str, str] | None = None, /, **options: object) -> ConnectionSettings:
    arguments: dict[str, object] = {
        "target": None,
        "token": None,
        "ca_file": None,
        "plaintext": False,
        "timeout": 60.0,
        "options": None,
    }
    return ConnectionSettings.resolve(**{**arguments, **options}, env=env or {})  # type: ignore[arg-type]


def test_defaults() -> None:
    settings = resolve()
    assert (settings.target, settings.token, settings.plaintext, settings.timeout) == (
        "127.0.0.1:50051",
        None,
        False,
        60.0,
    )


def test_environment_fills_in_target_and_token() -> None:
    settings = resolve({"GATEWAY_TARGET": "gw:443", "GATEWAY_TOKEN": TOKEN})
    assert (settings.target, settings.token) == ("gw:443", TOKEN)


def test_arguments_win_over_environment() -> None:
    settings = resolve({"GATEWAY_TARGET": "gw:443", "GATEWAY_TOKEN": TOKEN}, target="other:443", token="mine")
    assert (settings.target, settings.token) == ("other:443", "mine")


def test_empty_token_means_none() -> None:
    assert resolve({"GATEWAY_TOKEN": ""}).token is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": "10.0.0.1:50051", "plaintext": True}, "loopback"),
        ({"plaintext": True, "ca_file": "ca.pem"}, "ca_file"),
        ({"timeout": 0}, "timeout"),
        ({"token": "two words"}, "whitespace"),
    ],
)
def test_invalid_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        resolve(**options)
    assert isinstance(raised.value, ValueError)  # what these options raised before ConfigurationError


def test_token_never_in_repr_or_errors() -> None:
    settings = resolve(token=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in settings.describe()
    assert TOKEN not in repr(BearerToken(TOKEN))
    with pytest.raises(ValueError, match="whitespace") as caught:
        resolve(token=TOKEN + "\n")
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.pem", None, "cannot read ca_file '{path}': No such file or directory"),
        ("a-directory", "dir", "cannot read ca_file '{path}': Is a directory"),
        ("key.pem", b"-----BEGIN PRIVATE KEY-----\n", "ca_file '{path}' holds no PEM certificate"),
        ("empty.pem", b"", "ca_file '{path}' holds no PEM certificate"),
    ],
)
def test_an_unusable_ca_file_is_named_when_the_client_is_made(
    tmp_path: Path, name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigurationError) as raised:
        resolve(ca_file=path)
    assert str(raised.value).startswith(message.format(path=path))
    assert raised.value.path == str(path)


@pytest.mark.parametrize("client_class", [AIClient, AsyncAIClient])
def test_both_clients_raise_the_configuration_error_for_a_missing_ca_file(
    tmp_path: Path, client_class: type[AIClient] | type[AsyncAIClient]
) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.pem"):
        client_class(ca_file=tmp_path / "missing.pem")


def test_an_unreadable_ca_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads every file; make it unreadable another way
        path.chmod(0o600)
        path.unlink()
        path.symlink_to(path)  # a symlink loop: reading it fails with ELOOP
    with pytest.raises(ConfigurationError, match=f"cannot read ca_file '{path}': "):
        resolve(ca_file=path)


def test_plaintext_without_token_is_insecure() -> None:
    assert resolve(plaintext=True).credentials() is None
    assert resolve(plaintext=True, token=TOKEN).credentials() is not None
