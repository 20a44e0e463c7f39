"""The servicer ends each call at the seam (record written, policies settled) before the status is sent.

A client that has its status can read the access log line of that call: these tests pin the order with a
ServicerContext stand-in that notes how many access lines exist when the status goes out.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from generated import ai_service_pb2 as pb
from server.errors import UpstreamUnavailable
from server.policy.seam import Seam
from server.routing.catalog import Catalog, ModelConfig
from server.routing.dispatch import Router
from server.service import AIService
from tests.server.scripted import Cut, Reply, ScriptedProvider


class StatusSent(Exception):
    """What grpc.aio's abort raises once the status is on its way."""


class RecordingContext:
    """The parts of grpc.aio.ServicerContext the servicer uses, noting what happened in which order."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog
        self.written: list[Any] = []
        self.status: Any = None
        self.lines_when_status_sent: int | None = None

    def time_remaining(self) -> float:
        return 30.0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def write(self, message: Any) -> None:
        self.written.append(message)

    async def abort_with_status(self, status: Any) -> None:
        self.lines_when_status_sent = len(access_lines(self._caplog))
        self.status = status
        raise StatusSent


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server.access"]


def service(*steps: Reply | Cut | UpstreamUnavailable) -> AIService:
    provider = ScriptedProvider("a", {"m": list(steps)})
    catalog = Catalog([ModelConfig(name="m", provider="a")], ["a"])
    return AIService(Seam(Router(catalog, {"a": provider})))


def stream_request(model: str) -> pb.StreamGenerateRequest:
    return pb.StreamGenerateRequest(model=model, messages=[pb.Message(role="user", content="hi")])


@pytest.mark.parametrize(
    ("model", "steps", "code"),
    [
        ("nope", [Reply()], "INVALID_ARGUMENT"),
        ("m", [UpstreamUnavailable("upstream a is down", provider="a")], "UNAVAILABLE"),
        ("m", [Cut(("one", " two"), UpstreamUnavailable("cut", provider="a", reason="X_CUT"))], "UNAVAILABLE"),
    ],
)
async def test_a_failed_stream_is_logged_before_its_status_is_sent(
    caplog: pytest.LogCaptureFixture, model: str, steps: list[Reply | Cut | UpstreamUnavailable], code: str
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    context = RecordingContext(caplog)
    with pytest.raises(StatusSent):
        await service(*steps).StreamGenerate(stream_request(model), context)  # type: ignore[arg-type]
    assert context.lines_when_status_sent == 1
    [line] = access_lines(caplog)
    assert f" code={code} " in line
    assert f" deltas={len(context.written)} " in line


async def test_a_failed_unary_call_is_logged_before_its_status_is_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    context = RecordingContext(caplog)
    request = pb.GenerateRequest(model="m", messages=[pb.Message(role="user", content="hi")])
    with pytest.raises(StatusSent):
        await service(UpstreamUnavailable("down", provider="a")).Generate(request, context)  # type: ignore[arg-type]
    assert context.lines_when_status_sent == 1


async def test_a_successful_stream_is_logged_before_the_handler_returns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    context = RecordingContext(caplog)
    await service(Reply("one two")).StreamGenerate(stream_request("m"), context)  # type: ignore[arg-type]
    # grpc sends OK only after the handler returns; the line is already there.
    [line] = access_lines(caplog)
    assert " code=OK " in line
    assert " deltas=2 " in line
    assert context.status is None
