"""Connection settings shared by both clients: where to connect, how to secure it, how to authenticate.

    plaintext  token   channel credentials
    False      any     TLS (system roots, or the CA in `ca_file`) + bearer call credentials
    True       set     local TCP credentials (loopback only) + bearer call credentials
    True       None    an insecure channel (loopback only)

gRPC sends call credentials only over a channel it considers secure, which is why a plaintext channel
with a token uses local credentials rather than an insecure channel. The token is kept out of every
repr and message.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from client import defaults
from client.diagnose import explain
from client.errors import ConfigurationError, GatewayError, error_from_rpc_error
from client.retry import RetryPolicy, channel_options

__all__ = [
    "DEFAULT_RETRY",
    "HEALTH_CHECK",
    "BearerToken",
    "ChannelOptions",
    "ConnectionSettings",
    "is_loopback_target",
    "read_ca_file",
]

ChannelOptions: TypeAlias = Sequence[tuple[str, Any]]

DEFAULT_RETRY = RetryPolicy()
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

# Name-resolver prefixes that may stand before the address, e.g. "dns:///localhost:50051".
_SCHEMES = ("dns:///", "dns:", "ipv4:", "ipv6:")
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class BearerToken(grpc.AuthMetadataPlugin):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Resolved client options; `resolve` applies the environment and checks them."""

    target: str
    token: str | None = field(repr=False)
    ca_file: Path | None
    ca_certificates: bytes | None = field(repr=False)  # the PEM read from ca_file
    plaintext: bool
    timeout: float
    # The caller's channel options, plus the retry service config unless `retry` is None (client/retry.py).
    options: tuple[tuple[str, Any], ...]
    retry: RetryPolicy | None = DEFAULT_RETRY
    load_balancing: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        target: str | None,
        token: str | None,
        ca_file: str | os.PathLike[str] | None,
        plaintext: bool,
        timeout: float,
        options: ChannelOptions | None,
        env: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        load_balancing: str | None = None,
    ) -> ConnectionSettings:
        """Raises ConfigurationError for a wrong option, naming it (and the file, for `ca_file`)."""
        env = os.environ if env is None else env
        target = target or env.get(defaults.TARGET_ENV) or defaults.DEFAULT_TARGET
        token = token or env.get(defaults.TOKEN_ENV) or None
        if plaintext and not is_loopback_target(target):
            raise ConfigurationError(
                f"plaintext is only allowed to a loopback target (127.0.0.0/8, ::1, localhost), not {target!r}"
            )
        if plaintext and ca_file is not None:
            raise ConfigurationError("ca_file applies to TLS; it cannot be combined with plaintext")
        if token is not None and any(c.isspace() for c in token):
            raise ConfigurationError("the token must not contain whitespace")
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout}")
        if load_balancing is not None and load_balancing not in defaults.LOAD_BALANCING_POLICIES:
            known = ", ".join(defaults.LOAD_BALANCING_POLICIES)
            raise ConfigurationError(f"load_balancing must be one of {known}, not {load_balancing!r}")
        path = Path(ca_file) if ca_file is not None else None
        roots = read_ca_file(path) if path is not None else None
        extra = _connection_options(options or (), load_balancing)
        return cls(target, token, path, roots, plaintext, timeout, channel_options(extra, retry), retry, load_balancing)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials, or None for an insecure channel."""
        if self.plaintext:
            if self.token is None:
                return None
            channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        else:
            channel = grpc.ssl_channel_credentials(root_certificates=self.ca_certificates)
        if self.token is None:
            return channel
        return grpc.composite_channel_credentials(channel, grpc.metadata_call_credentials(BearerToken(self.token)))

    def error(self, exc: grpc.RpcError) -> GatewayError:
        """The GatewayError for a call of a client with these settings that failed with `exc`."""
        return explain(error_from_rpc_error(exc), target=self.target, plaintext=self.plaintext)

    def deadline(self, timeout: float | None) -> float:
        """The deadline of one call: its own `timeout`, else the client's default."""
        return self.timeout if timeout is None else timeout

    def describe(self) -> str:
        """A token-free description for reprs: target, security and deadline."""
        security = "plaintext" if self.plaintext else "tls"
        if self.ca_file is not None:
            security += f", ca_file={str(self.ca_file)!r}"
        auth = "bearer" if self.token else "none"
        balancing = f", load_balancing={self.load_balancing!r}" if self.load_balancing else ""
        return f"target={self.target!r}, {security}, auth={auth}, timeout={self.timeout:g}{balancing}"


def _connection_options(options: ChannelOptions, load_balancing: str | None) -> tuple[tuple[str, Any], ...]:
    """The caller's options, plus the load-balancing policy and keepalive pings unless the caller set them."""
    keys = {key for key, _ in options}
    extra: list[tuple[str, Any]] = []
    if load_balancing is not None and "grpc.lb_policy_name" not in keys:
        extra.append(("grpc.lb_policy_name", load_balancing))
    if "grpc.keepalive_time_ms" not in keys:
        extra.append(("grpc.keepalive_time_ms", round(defaults.KEEPALIVE_TIME_S * 1000)))
    if "grpc.keepalive_timeout_ms" not in keys:
        extra.append(("grpc.keepalive_timeout_ms", round(defaults.KEEPALIVE_TIMEOUT_S * 1000)))
    return (*options, *extra)


def read_ca_file(path: Path) -> bytes:
    """The PEM certificates in `path`; ConfigurationError naming the file when it cannot be used. gRPC itself
    would accept anything here and fail every handshake later with a message that names no file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read ca_file {str(path)!r}: {exc.strerror}", path=str(path)) from exc
    if _PEM_CERTIFICATE not in pem:
        raise ConfigurationError(
            f"ca_file {str(path)!r} holds no PEM certificate (no {_PEM_CERTIFICATE.decode()} line)", path=str(path)
        )
    return pem


def is_loopback_target(target: str) -> bool:
    """True for targets on this machine: localhost, 127.0.0.0/8 or ::1, with or without a port; for an
    address list (`ipv4:127.0.0.1:50051,127.0.0.1:50052`), when every address is."""
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme) and "," in target:
            return all(_is_loopback(scheme + address) for address in target[len(scheme) :].split(","))
    return _is_loopback(target)


def _is_loopback(target: str) -> bool:
    host = _host(target)
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(target: str) -> str:
    for scheme in _SCHEMES:
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    if target.startswith("["):  # [::1]:50051
        return target[1 : target.find("]")] if "]" in target else target
    if target.count(":") == 1:  # host:port
        return target.rsplit(":", 1)[0]
    return target  # a bare host, or a bare IPv6 address
