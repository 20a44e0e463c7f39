"""Label values come from a fixed set: the catalog's names, the configured providers and clients."""

from __future__ import annotations

import pytest

from server.observe.metrics import LabelBounds
from server.routing.catalog import Catalog, Deployment, ModelConfig
from server.types import Served

CATALOG = Catalog(
    [
        ModelConfig(name="chat", provider="up", upstream_model="big", aliases=("default",)),
        ModelConfig(name="split", deployments=(Deployment("up", "a", weight=95, name="main"), Deployment("up", "b"))),
    ],
    ["up"],
    {"tier-1": "chat"},
)
BOUNDS = LabelBounds(CATALOG, clients=["billing"], providers=["up"])


@pytest.mark.parametrize(
    ("asked", "label"),
    [
        ("chat", "chat"),
        ("default", "default"),  # an alias is a catalog name: kept as asked
        ("tier-1", "tier-1"),
        ("up/anything-a-client-typed", "up/*"),  # a pass-through: the provider only
        ("nowhere/x", "unknown"),
        ("gpt-\u2603\n<script>", "unknown"),
        ("", ""),
    ],
)
def test_a_model_label_is_a_catalog_name_a_providers_pass_through_or_unknown(asked: str, label: str) -> None:
    assert BOUNDS.model(asked) == label


@pytest.mark.parametrize(
    ("served", "label"),
    [
        (Served("chat", "up", "up/big"), "up/big"),
        (Served("split", "up", "main"), "main"),  # a named deployment
        (Served("split", "up", "up/b"), "up/b"),
        (Served("up/x", "up", "up/x"), "up/*"),
        (Served("x", "gone", "gone/x"), "unknown/*"),
    ],
)
def test_a_deployment_label_is_the_catalogs_or_its_providers_pass_through(served: Served, label: str) -> None:
    assert BOUNDS.deployment(served) == label


def test_clients_are_the_configured_names_and_anonymous_without_auth() -> None:
    assert [BOUNDS.client(c) for c in ("billing", None, "someone-else")] == ["billing", "anonymous", "unknown"]


@pytest.mark.parametrize(
    ("reason", "label"),
    [("", ""), ("UPSTREAM_UNAVAILABLE", "UPSTREAM_UNAVAILABLE"), ("upstream said: no", "OTHER"), ("A" * 65, "OTHER")],
)
def test_a_reason_label_is_an_upper_snake_name_or_other(reason: str, label: str) -> None:
    assert BOUNDS.reason(reason) == label


def test_breaker_keys_of_pass_through_names_are_not_upstreams_of_the_catalog() -> None:
    assert BOUNDS.is_upstream("up/a")
    assert not BOUNDS.is_upstream("up/anything")
