"""The seam's promises to policies, one function at a time: admit in order, settle each admitted one once,
in reverse order, even when another policy's settle fails."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from server.errors import GatewayOverloaded
from server.policy.seam import CallContext, Seam
from server.providers.demo import DemoProvider
from server.routing.catalog import Catalog, ModelConfig
from server.routing.dispatch import Router
from server.types import ChatMessage, ChatRequest, Role

MODEL = ModelConfig(name="demo", provider="demo")
REQUEST = ChatRequest("demo", (ChatMessage(Role.USER, "one two"),))


@dataclass
class Noting:
    name: str
    journal: list[str]
    refuse: bool = False
    broken_settle: bool = False
    seen: list[CallContext] = field(default_factory=list)

    async def admit(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> None:
        self.journal.append(f"admit {self.name}")
        if self.refuse:
            raise GatewayOverloaded("no", retry_after_s=1.0)

    def settle(self, call: CallContext) -> None:
        self.journal.append(f"settle {self.name} {call.record.code}")
        if self.broken_settle:
            raise RuntimeError("a bug in a policy")


def seam(*policies: Noting) -> Seam:
    return Seam(Router(Catalog([MODEL], ["demo"]), {"demo": DemoProvider("demo")}), policies)


async def test_policies_admit_in_order_and_settle_in_reverse_once() -> None:
    journal: list[str] = []
    s = seam(Noting("a", journal), Noting("b", journal))
    call = s.begin("Generate", "team", "demo")
    completion = await s.complete(call, MODEL, REQUEST)
    assert completion.text == "one two"
    assert call.record.usage == completion.usage
    s.end(call)
    s.end(call)  # a second end does nothing
    assert journal == ["admit a", "admit b", "settle b OK", "settle a OK"]


async def test_a_refusal_settles_only_the_policies_before_it() -> None:
    journal: list[str] = []
    s = seam(Noting("a", journal), Noting("b", journal, refuse=True), Noting("c", journal))
    call = s.begin("StreamGenerate", None, "demo")
    with pytest.raises(GatewayOverloaded) as refused:
        await s.stream(call, MODEL, REQUEST)
    s.end(call, refused.value)
    assert journal == ["admit a", "admit b", "settle a RESOURCE_EXHAUSTED"]


async def test_a_failing_settle_is_logged_and_the_others_still_settle(caplog: pytest.LogCaptureFixture) -> None:
    journal: list[str] = []
    s = seam(Noting("a", journal), Noting("b", journal, broken_settle=True))
    call = s.begin("Generate", None, "demo")
    await s.complete(call, MODEL, REQUEST)
    with caplog.at_level(logging.ERROR, logger="server.policy.seam"):
        s.end(call, code="CANCELLED")
    assert journal == ["admit a", "admit b", "settle b CANCELLED", "settle a CANCELLED"]
    assert "policy Noting failed to settle a Generate call" in caplog.text


class ClosingRouter(Router):
    """A router that says when it is closed."""

    def __init__(self) -> None:
        super().__init__(Catalog([MODEL], ["demo"]), {"demo": DemoProvider("demo")})
        self.closed = asyncio.Event()

    async def aclose(self) -> None:
        self.closed.set()


async def test_a_reload_sends_new_calls_to_the_new_router_and_closes_the_old_one_after_its_last_call() -> None:
    old, new = ClosingRouter(), ClosingRouter()
    s = Seam(old)
    running = s.begin("StreamGenerate", None, "demo")
    s.swap(new)
    after = s.begin("Generate", None, "demo")

    assert (running.router, after.router, s.catalog) == (old, new, new.catalog)
    s.end(after)
    await asyncio.sleep(0)  # a close would be a task by now
    assert not old.closed.is_set()  # a call still runs on it
    s.end(running)
    await old.closed.wait()
    assert not new.closed.is_set()
    await s.aclose()
    assert new.closed.is_set()


async def test_a_router_with_no_call_running_is_closed_as_soon_as_it_is_replaced() -> None:
    old, new = ClosingRouter(), ClosingRouter()
    s = Seam(old)
    s.end(s.begin("Generate", None, "demo"))
    s.swap(new)
    await old.closed.wait()
