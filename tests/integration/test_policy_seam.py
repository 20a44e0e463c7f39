"""The policy seam: every Generate, StreamGenerate and InteractiveStream turn passes it once, a policy's refusal
is the call's status with nothing sent upstream, and every admitted policy settles once, with the outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2

from server.app import Gateway, start_gateway
from server.errors import GatewayError, GatewayOverloaded
from server.observe.request_id import valid_request_id
from server.policy.seam import CallContext, Policy
from server.routing.catalog import ModelConfig
from server.types import ChatRequest
from tests.conftest import openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import Bidi
from tests.rpc import collect_stream, detail, error_info, request, rich_status, stub_for, unary_request


@dataclass(frozen=True)
class Settled:
    method: str
    model: str
    code: str
    reason: str
    deltas: int
    completion_tokens: int | None


@dataclass
class RecordingPolicy:
    """Admits (or refuses with `refusal`) and notes every admit and settle."""

    refusal: GatewayError | None = None
    admitted: list[tuple[str, str]] = field(default_factory=list)
    settled: list[Settled] = field(default_factory=list)

    async def admit(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> None:
        self.admitted.append((call.record.method, model.name))
        if self.refusal is not None:
            raise self.refusal

    def settle(self, call: CallContext) -> None:
        record = call.record
        tokens = record.usage.completion_tokens if record.usage else None
        self.settled.append(Settled(record.method, record.model, record.code, record.reason, record.deltas, tokens))


@pytest.fixture
async def start(fake_openai: FakeOpenAIUpstream) -> AsyncIterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        await gateway.stop(0)


async def gateway_with(started: list[Gateway], fake: FakeOpenAIUpstream, *policies: Policy) -> Gateway:
    gateway = await start_gateway(openai_config(fake.base_url), policies=policies)
    started.append(gateway)
    return gateway


async def test_every_call_and_turn_passes_the_seam_once_and_settles_with_its_outcome(
    start: list[Gateway], fake_openai: FakeOpenAIUpstream
) -> None:
    policy = RecordingPolicy()
    gateway = await gateway_with(start, fake_openai, policy)
    async with stub_for(gateway) as stub:
        await stub.Generate(unary_request("gpt-test", "one two"), timeout=10)
        outcome = await collect_stream(stub, request("gpt-test", "one two three"))
        assert outcome.error is None
        bidi = Bidi(stub)
        await bidi.start("gpt-test")
        await bidi.turn("t1", "four five")
        await bidi.until_end_of("t1")
        await bidi.turn("t2", "six", model="fault-401")
        [turn_error] = await bidi.until_end_of("t2")
        assert turn_error.WhichOneof("kind") == "error"
        assert (await bidi.finish()).code == grpc.StatusCode.OK

    assert policy.admitted == [
        ("Generate", "gpt-test"),
        ("StreamGenerate", "gpt-test"),
        ("InteractiveStream.turn", "gpt-test"),
        ("InteractiveStream.turn", "fault-401"),
    ]
    # Settled before the client learned the outcome: every entry is here once the replies have arrived.
    assert policy.settled == [
        Settled("Generate", "gpt-test", "OK", "", 0, 2),
        Settled("StreamGenerate", "gpt-test", "OK", "", 3, 3),
        Settled("InteractiveStream.turn", "gpt-test", "OK", "", 2, 2),
        Settled("InteractiveStream.turn", "fault-401", "INTERNAL", "UPSTREAM_AUTH_FAILED", 0, None),
    ]


async def test_a_refusal_is_the_status_of_each_rpc_and_nothing_reaches_the_upstream(
    start: list[Gateway], fake_openai: FakeOpenAIUpstream
) -> None:
    first = RecordingPolicy()
    refusal = GatewayOverloaded("refused by the test policy", retry_after_s=2.0, metadata={"limit": "test"})
    refusing = RecordingPolicy(refusal=refusal)
    gateway = await gateway_with(start, fake_openai, first, refusing)
    async with stub_for(gateway) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Generate(unary_request("gpt-test"), timeout=10)
        streamed = await collect_stream(stub, request("gpt-test"))
        bidi = Bidi(stub)
        await bidi.start("gpt-test")
        await bidi.turn("t1", "hello")
        [turn] = await bidi.until_end_of("t1")
        ended = await bidi.finish()

    for error in (unary.value, streamed.error):
        assert error is not None
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == "refused by the test policy"
        info = error_info(error)
        metadata = dict(info.metadata)
        assert valid_request_id(metadata.pop("request_id"))
        assert (info.reason, metadata) == ("GATEWAY_OVERLOADED", {"limit": "test"})
        retry = detail(rich_status(error), error_details_pb2.RetryInfo)
        assert retry is not None
        assert retry.retry_delay.seconds == 2
    assert streamed.chunks == []
    assert turn.WhichOneof("kind") == "error"
    assert turn.error.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert turn.error.status.message == "refused by the test policy"
    assert ended.code == grpc.StatusCode.OK  # a refused turn ends that turn, not the session
    assert fake_openai.connections_accepted == 0
    # The policy that admitted settles once per call with the refusal; the refusing one never admitted.
    assert [(s.method, s.code, s.reason) for s in first.settled] == [
        ("Generate", "RESOURCE_EXHAUSTED", "GATEWAY_OVERLOADED"),
        ("StreamGenerate", "RESOURCE_EXHAUSTED", "GATEWAY_OVERLOADED"),
        ("InteractiveStream.turn", "RESOURCE_EXHAUSTED", "GATEWAY_OVERLOADED"),
    ]
    assert len(refusing.admitted) == 3
    assert refusing.settled == []


async def test_a_session_whose_client_cancels_settles_the_running_turn_as_cancelled(
    start: list[Gateway], fake_openai: FakeOpenAIUpstream
) -> None:
    policy = RecordingPolicy()
    gateway = await gateway_with(start, fake_openai, policy)
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("slow-tokens-50")
        await bidi.turn("t1", " ".join(["word"] * 400))  # 20 s of tokens: still running when cancelled
        await bidi.until(lambda r: r.WhichOneof("kind") == "delta")  # the turn is streaming
        bidi.call.cancel()
    await gateway.stop(30.0)  # returns once every handler has ended (at once: none is left running)
    start.remove(gateway)
    assert [(s.method, s.code) for s in policy.settled] == [("InteractiveStream.turn", "CANCELLED")]
