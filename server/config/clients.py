"""The `clients` entries and `client_defaults` of a config file: who may call, with what, and how much.

    clients:
      - name: search-team                 # letters, digits, ".", "_", "-"; in logs and metric labels
        tokens:                           # bearer tokens, as sha256 digests (several: a rotation's overlap)
          - sha256: <64 hex characters>   # `python -m server hash-token` prints this entry
          - env: SEARCH_TEAM_TOKEN        # or the token itself, read from a variable
        certificates: [search.internal]   # mTLS: a verified client certificate's subject CN or SAN
        models: [gpt-4.1, "anthropic/*"]  # names, aliases, provider/* (absent: client_defaults.models)
        limits: {requests_per_minute: 600, tokens_per_minute: 200000, concurrent_streams: 16,
                 budget_usd_per_day: 50, budget_usd_per_month: 1000}
    client_defaults:                      # what a client gets for what it leaves out
      models: ["*"]
      limits: {requests_per_minute: 60}

As everywhere in the config, problems are collected, not raised; checks.py adds the rules that need the
catalog (models that exist, providers that are configured) and the names' uniqueness.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from server.config.readers import as_list, mapping, number, unknown_keys
from server.config.schema import ClientConfig, ClientDefaults, ClientLimits
from server.errors import register_secret

__all__ = ["CLIENT_NAME", "env_digest", "hex_digest", "parse_client_defaults", "parse_clients", "token_digest"]

# Client names become log fields and metric label values: a short, plain word.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Certificate names as they appear in a CN or SAN (a DNS name, a URI such as spiffe://…, an e-mail).
_CERTIFICATE_NAME = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._:/@*+=-]{0,254}")
_CLIENT_KEYS = {"name", "tokens", "certificates", "models", "limits"}
_INTEGER_LIMITS = ("requests_per_minute", "tokens_per_minute", "concurrent_streams")
_BUDGETS = ("budget_usd_per_day", "budget_usd_per_month")


def parse_clients(raw: Any, env: Mapping[str, str], problems: list[str]) -> tuple[ClientConfig, ...]:
    clients = []
    for i, item in enumerate(as_list(raw, "clients", problems)):
        client = _parse_client(item, f"clients[{i}]", env, problems)
        if client is not None:
            clients.append(client)
    return tuple(clients)


def parse_client_defaults(raw: Any, problems: list[str]) -> ClientDefaults:
    entry = mapping(raw, "client_defaults", problems)
    unknown_keys(entry, {"models", "limits"}, "client_defaults.", problems)
    defaults = ClientDefaults()
    models = _models(entry["models"], "client_defaults.models", problems) if "models" in entry else None
    limits = _limits(entry["limits"], "client_defaults.limits", problems) if "limits" in entry else defaults.limits
    return ClientDefaults(models=defaults.models if models is None else models, limits=limits)


def token_digest(token: str) -> str:
    """The hex sha256 of a token, as `clients[].tokens[].sha256` (and `auth.tokens[].sha256`) hold it."""
    return hashlib.sha256(token.encode()).hexdigest()


def _parse_client(raw: Any, where: str, env: Mapping[str, str], problems: list[str]) -> ClientConfig | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, _CLIENT_KEYS, f"{where}.", problems)
    name = str(entry.get("name") or "")
    if not CLIENT_NAME.fullmatch(name):
        problems.append(f"{where}.name: required: 1 to 64 letters, digits, '.', '_' or '-', got {name!r}")
        return None
    tokens = tuple(
        digest
        for j, item in enumerate(as_list(entry.get("tokens", []), f"{where}.tokens", problems))
        if (digest := _token(item, f"{where}.tokens[{j}]", env, problems)) is not None
    )
    certificates = _certificates(entry.get("certificates", []), f"{where}.certificates", problems)
    if not tokens and not certificates and "tokens" not in entry and "certificates" not in entry:
        problems.append(f"{where}: give the client tokens, certificates or both: it has no way to prove who it is")
    models = _models(entry["models"], f"{where}.models", problems) if "models" in entry else None
    limits = _limits(entry["limits"], f"{where}.limits", problems) if "limits" in entry else ClientLimits()
    return ClientConfig(name=name, tokens=tokens, certificates=certificates, models=models, limits=limits)


def _token(raw: Any, where: str, env: Mapping[str, str], problems: list[str]) -> bytes | None:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, {"sha256", "env"}, f"{where}.", problems)
    if ("sha256" in entry) == ("env" in entry):
        problems.append(f"{where}: give exactly one of sha256 (hex digest of the token) or env")
        return None
    if "sha256" in entry:
        return hex_digest(str(entry["sha256"]), where, problems)
    return env_digest(str(entry["env"]), env, where, problems)


def hex_digest(text: str, where: str, problems: list[str]) -> bytes | None:
    """The sha256 digest written as 64 hex characters in `text` (a `sha256:` entry)."""
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        problems.append(f"{where}.sha256: expected 64 hex characters (sha256 of the token)")
        return None
    return digest


def env_digest(variable: str, env: Mapping[str, str], where: str, problems: list[str]) -> bytes | None:
    """The sha256 digest of the token in `variable` (an `env:` entry); the token is registered as a secret."""
    token = env.get(variable, "")
    if not token:
        problems.append(f"{where}.env: environment variable {variable} is not set or empty")
        return None
    register_secret(token)
    return hashlib.sha256(token.encode()).digest()


def _certificates(raw: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    names = []
    for j, item in enumerate(as_list(raw, where, problems)):
        name = str(item) if isinstance(item, str) else ""
        if not _CERTIFICATE_NAME.fullmatch(name):
            problems.append(f"{where}[{j}]: expected a certificate's CN or SAN (DNS name, URI, e-mail), got {item!r}")
            continue
        names.append(name)
    return tuple(names)


def _models(raw: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    """Model names, aliases, `provider/*` or `*`; whether they exist is checks.py's business."""
    models = []
    for j, item in enumerate(as_list(raw, where, problems)):
        if not isinstance(item, str) or not item:
            problems.append(f"{where}[{j}]: expected a model name, an alias, provider/* or *, got {item!r}")
            continue
        models.append(item)
    return tuple(models)


def _limits(raw: Any, where: str, problems: list[str]) -> ClientLimits:
    entry = mapping(raw, where, problems)
    unknown_keys(entry, set(ClientLimits.__dataclass_fields__), f"{where}.", problems)
    values: dict[str, Any] = {}
    for key in _INTEGER_LIMITS:
        if entry.get(key) is not None and (value := number(entry[key], f"{where}.{key}", problems, minimum=1)):
            if value != int(value):
                problems.append(f"{where}.{key}: expected a whole number, got {entry[key]!r}")
                continue
            values[key] = int(value)
    for key in _BUDGETS:
        if entry.get(key) is not None:
            budget = number(entry[key], f"{where}.{key}", problems, minimum=0)
            if budget is not None:
                values[key] = budget
    return ClientLimits(**values)
