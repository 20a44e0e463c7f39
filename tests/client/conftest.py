"""Targets of the shared gateway fixtures, as the client spells them."""

from __future__ import annotations

import pytest

from server.app import Gateway


@pytest.fixture
def demo_target(demo_gateway: Gateway) -> str:
    return f"127.0.0.1:{demo_gateway.port}"


@pytest.fixture
def openai_target(openai_gateway: Gateway) -> str:
    return f"127.0.0.1:{openai_gateway.port}"


@pytest.fixture
def secure_target(secure_gateway: Gateway) -> str:
    # "localhost" matches the test server certificate's DNS name.
    return f"localhost:{secure_gateway.port}"
