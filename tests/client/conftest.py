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
    # 127.0.0.1 matches the test server certificate's IP address. Not "localhost": it resolves to ::1 too,
    # where nothing listens, and a failed call's message then names whichever address gRPC tried last.
    return f"127.0.0.1:{secure_gateway.port}"
