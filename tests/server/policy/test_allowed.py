"""Which models a client's `models` list allows, read against the catalog."""

from __future__ import annotations

import pytest

from server.policy.allowed import AllowedModels
from server.routing.catalog import Catalog, Deployment, ModelConfig

CATALOG = Catalog(
    [
        ModelConfig("gpt-4.1", provider="openai", aliases=("gpt4",)),
        ModelConfig(
            "mixed",
            deployments=(Deployment("openai", "gpt-4.1"), Deployment("anthropic", "claude-sonnet-4-5")),
        ),
        ModelConfig("claude", provider="anthropic", upstream_model="claude-sonnet-4-5"),
    ],
    ["openai", "anthropic"],
    {"standard": "gpt-4.1"},
)


@pytest.mark.parametrize(
    ("entries", "model", "allowed"),
    [
        (["*"], "mixed", True),
        (["gpt-4.1"], "gpt-4.1", True),
        (["gpt-4.1"], "gpt4", True),  # the same model by its alias
        (["gpt4"], "gpt-4.1", True),  # an alias allows its model by any name
        (["standard"], "gpt-4.1", True),  # a config alias too
        (["gpt-4.1"], "claude", False),
        (["anthropic/*"], "claude", True),
        (["anthropic/*"], "anthropic/claude-haiku-4-5", True),  # built-in model of the preset
        (["anthropic/*"], "anthropic/any-future-model", True),  # pass-through
        (["anthropic/*"], "mixed", False),  # one of its deployments is elsewhere
        (["anthropic/*", "openai/*"], "mixed", True),
        (["openai/*"], "claude", False),
        ([], "gpt-4.1", False),
    ],
)
def test_allows(entries: list[str], model: str, allowed: bool) -> None:
    resolved = CATALOG.resolve(model)
    assert resolved is not None
    assert AllowedModels(entries, CATALOG).allows(resolved) is allowed
