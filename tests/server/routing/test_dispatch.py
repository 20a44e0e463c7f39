"""The router: the final event and the completion name who served and what it cost."""

from __future__ import annotations

import pytest

from server.providers.demo import DemoProvider
from server.routing.catalog import Catalog, ModelConfig, Price
from server.routing.dispatch import Router
from server.types import ChatMessage, ChatRequest, Finish, Role, TextDelta


def router(models: list[ModelConfig]) -> Router:
    return Router(Catalog(models, ("demo",)), {"demo": DemoProvider("demo")})


async def test_the_final_event_names_who_served_and_what_it_cost() -> None:
    model = ModelConfig(name="echo", provider="demo", upstream_model="demo", price=Price(1.0, 2.0))
    r = router([model])
    request = ChatRequest("echo", (ChatMessage(Role.USER, "one two three"),))
    events = [event async for event in r.stream(model, request)]
    assert events[:3] == [TextDelta("one"), TextDelta(" two"), TextDelta(" three")]
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert finish.served is not None
    assert (finish.served.model, finish.served.provider, finish.served.deployment) == ("echo", "demo", "demo/demo")
    assert finish.cost_usd == pytest.approx((3 * 1.0 + 3 * 2.0) / 1_000_000)

    completion = await r.complete(model, request)
    assert completion.served == finish.served
    assert completion.cost_usd == finish.cost_usd


async def test_no_price_means_no_cost() -> None:
    model = ModelConfig(name="echo", provider="demo", upstream_model="unpriced")
    completion = await router([model]).complete(model, ChatRequest("echo", (ChatMessage(Role.USER, "hi"),)))
    assert completion.cost_usd is None
