"""The bench keeps every gateway's CPU to that gateway: the load of each gateway side runs elsewhere."""

from __future__ import annotations

import pytest

from bench.results import TARGETS
from bench.stack import CpuPlan


@pytest.mark.parametrize("target", [target for target in TARGETS if target != "direct"])
def test_the_load_of_every_gateway_side_stays_off_the_gateways_cpu(target: str) -> None:
    plan = CpuPlan(gateway=frozenset({0}), others=frozenset({1}))

    assert plan.load_cpus(target) == frozenset({1})


def test_the_direct_side_may_use_every_cpu() -> None:
    assert CpuPlan(gateway=frozenset({0}), others=frozenset({1})).load_cpus("direct") is None
