"""Which models a client may call: its `models` list (or `client_defaults.models`), read against the catalog.

    "*"              every model
    "anthropic/*"    every model all of whose deployments are on provider anthropic: the preset's
                     built-in models, "anthropic/…" pass-through names, catalog models served there
    "gpt-4.1"        that model, by its name or any of its aliases
    "standard"       an alias: the model it points at, by any of its names

A call is judged by the model its name resolves to, so a client allowed `gpt-4.1` may call it as `gpt4`
too. Fallbacks are the operator's choice and are not checked against the client's list.
"""

from __future__ import annotations

from collections.abc import Iterable

from server.routing.catalog import Catalog, ModelConfig

__all__ = ["AllowedModels"]


class AllowedModels:
    __slots__ = ("_everything", "_names", "_providers")

    def __init__(self, entries: Iterable[str], catalog: Catalog) -> None:
        entries = tuple(entries)
        self._everything = "*" in entries
        self._providers = frozenset(entry[:-2] for entry in entries if entry.endswith("/*"))
        names = set()
        for entry in entries:
            model = catalog.resolve(entry) if entry != "*" and not entry.endswith("/*") else None
            if model is not None:
                names.add(model.name)
        self._names = frozenset(names)

    def allows(self, model: ModelConfig) -> bool:
        if self._everything or model.name in self._names:
            return True
        if not self._providers:
            return False
        return all(deployment.provider in self._providers for deployment in model.all_deployments)
