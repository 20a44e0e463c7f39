"""InteractiveStream through a real gateway and the fake upstream: both modes, cancel, per-turn errors,
half-close and every protocol violation. Each test ends with no session and no session task left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server.app import Gateway
from server.config import InteractiveConfig
from server.resilience.retry import RetryPolicy
from tests.conftest import ENDLESS, GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.integration.test_openai_bridge import FAULTS, Fault
from tests.interactive import Bidi, UpstreamMeter, assert_no_session_left, rid_of
from tests.rpc import collect_stream, detail, error_info, request, rich_status, stub_for

Code = grpc.StatusCode
SLOW = "slow-tokens-50"  # 50 ms between words
EIGHT_WORDS = "one two three four five six seven eight"


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    # One attempt per call: a fault reaches the turn at once, as it reaches a unary or stream call.
    return await make_gateway(openai_config(fake_openai.base_url, retry=RetryPolicy(max_attempts=1)))


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[pb_grpc.AIServiceAsyncStub]:
    async with stub_for(gateway) as stub:
        yield stub
    await assert_no_session_left(gateway)


def texts(responses: list[pb.InteractiveResponse]) -> str:
    return "".join(r.delta.text for r in responses if r.WhichOneof("kind") == "delta")


# ErrorInfo metadata that differs from call to call: the ids of the call and of the upstream's answer.
PER_CALL_IDS = ("request_id", "session_request_id", "upstream_request_id")


def decoded(status: status_pb2.Status) -> tuple[int, str, list[object]]:
    """A status with its details unpacked (packed maps are serialized in no fixed order), less the ids
    that differ from call to call (each side must have them)."""
    kinds = (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest)
    details = [detail(status, kind) for kind in kinds]
    info = details[0]
    if isinstance(info, error_details_pb2.ErrorInfo):
        assert ("request_id" in info.metadata) != ("session_request_id" in info.metadata)
        for key in PER_CALL_IDS:
            info.metadata.pop(key, None)
    return status.code, status.message, details


def header_of(metadata: object, key: str) -> str:
    [value] = [value for k, value in metadata or () if k == key]  # type: ignore[attr-defined]
    return str(value)


def status_of(response: pb.InteractiveResponse) -> tuple[int, str]:
    assert response.WhichOneof("kind") == "error", response
    info = detail(response.error.status, error_details_pb2.ErrorInfo)
    assert info is not None
    return response.error.status.code, info.reason


# --- conversation -----------------------------------------------------------------------------------------


async def test_a_conversation_sends_turn_three_with_the_earlier_turns_and_replies(
    stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    bidi = Bidi(stub)
    started = await bidi.start("gpt-test", system_prompt="be brief")
    assert (started.model, started.mode, started.max_in_flight) == ("gpt-test", pb.SESSION_MODE_CONVERSATION, 1)
    assert started.session_id

    for i, text in enumerate(["the first", "a second", "and third"], start=1):
        await bidi.turn(str(i), text)
        events = await bidi.until_end_of(str(i))
        assert texts(events) == text
        assert events[-1].done.finish_reason == pb.FINISH_REASON_STOP
        assert events[-1].done.history_trimmed == 0

    assert fake_openai.requests[-1].body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the first"},
        {"role": "assistant", "content": "the first"},
        {"role": "user", "content": "a second"},
        {"role": "assistant", "content": "a second"},
        {"role": "user", "content": "and third"},
    ]
    assert (await bidi.finish()).code == Code.OK


async def test_a_turn_sent_while_another_runs_waits_for_it_and_sees_its_reply(
    stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    # Conversation rule: a new message queues behind the running turn, it does not interrupt it.
    bidi = Bidi(stub)
    await bidi.start(SLOW)
    await bidi.turn("1", "alpha beta gamma")
    await bidi.turn("2", "delta")
    outcome = await bidi.finish()

    assert outcome.code == Code.OK
    assert [rid_of(r) for r in outcome.responses] == ["1"] * 4 + ["2"] * 2
    assert outcome.responses[3].done.finish_reason == pb.FINISH_REASON_STOP
    assert [m["content"] for m in fake_openai.requests[-1].body["messages"]] == ["alpha beta gamma"] * 2 + ["delta"]


async def test_history_is_trimmed_oldest_first_and_done_says_how_much(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    limits = InteractiveConfig(max_history_messages=4)
    gateway = await make_gateway(openai_config(fake_openai.base_url, interactive=limits))
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start("gpt-test", system_prompt="sys")
        trimmed = []
        for i in range(1, 5):
            await bidi.turn(str(i), f"u{i}")
            trimmed.append((await bidi.until_end_of(str(i)))[-1].done.history_trimmed)
        await bidi.finish()

    # Turn 3 would send u1 a1 u2 a2 u3: u1 goes, then a1 (a reply may not lead); the system prompt stays.
    assert trimmed == [0, 0, 2, 2]
    assert [m["content"] for m in fake_openai.requests[-1].body["messages"]] == ["sys", "u3", "u3", "u4"]


# --- pipeline ---------------------------------------------------------------------------------------------


async def test_a_hundred_pipelined_requests_are_tagged_ordered_and_concurrent(
    gateway: Gateway,
    stub: pb_grpc.AIServiceAsyncStub,
    fake_openai: FakeOpenAIUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    meter = UpstreamMeter(gateway.router).install(monkeypatch, gateway.router)
    bidi = Bidi(stub)
    started = await bidi.start("fake-openai/slow-tokens-10", mode=pb.SESSION_MODE_PIPELINE, max_in_flight=8)
    assert started.max_in_flight == 8
    prompts = {f"r{i}": f"request {i} alpha beta" for i in range(100)}
    fake_openai.hold()  # no answer until eight requests wait upstream at once
    for request_id, prompt in prompts.items():
        await bidi.turn(request_id, prompt)
    await fake_openai.wait_for_requests(8)
    assert meter.open == 8
    fake_openai.release()
    outcome = await bidi.finish()

    assert outcome.code == Code.OK
    by_id: dict[str, list[pb.InteractiveResponse]] = {}
    for response in outcome.responses:
        by_id.setdefault(rid_of(response), []).append(response)
    assert by_id.keys() == prompts.keys()
    for request_id, events in by_id.items():
        assert [e.WhichOneof("kind") for e in events] == ["delta"] * 4 + ["done"], request_id
        assert texts(events) == prompts[request_id]
    order = [rid_of(r) for r in outcome.responses]
    assert order != sorted(order, key=order.index), "answers interleave"
    assert meter.most_open == 8


async def test_a_pipeline_request_may_be_a_full_message_list(
    stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    bidi = Bidi(stub)
    await bidi.start("gpt-test", mode=pb.SESSION_MODE_PIPELINE, system_prompt="sys")
    history = [pb.Message(role="user", content="hi"), pb.Message(role="assistant", content="hello")]
    await bidi.turn("1", "and now", messages=history)
    await bidi.turn("2", messages=[pb.Message(role="user", content="alone")])
    outcome = await bidi.finish()

    assert outcome.code == Code.OK
    sent = sorted(([m["content"] for m in r.body["messages"]] for r in fake_openai.requests), key=len)
    assert sent == [["sys", "alone"], ["sys", "hi", "hello", "and now"]]


async def test_a_turn_may_override_the_model_and_config(
    stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    bidi = Bidi(stub)
    await bidi.start("demo", config=pb.GenerationConfig(temperature=0.5, max_tokens=3))
    await bidi.turn("1", "one two three four five", model="gpt-test", config=pb.GenerationConfig(max_tokens=2))
    events = await bidi.until_end_of("1")
    await bidi.finish()

    assert texts(events) == "one two"
    assert (events[-1].done.model, events[-1].done.finish_reason) == ("gpt-test", pb.FINISH_REASON_LENGTH)
    assert fake_openai.requests[-1].body["temperature"] == 0.5
    assert fake_openai.requests[-1].body["max_tokens"] == 2


# --- cancel -----------------------------------------------------------------------------------------------


async def test_cancel_closes_the_upstream_and_ends_the_turn_cancelled(
    stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    bidi = Bidi(stub)
    await bidi.start(ENDLESS)
    await bidi.turn("1", EIGHT_WORDS)
    first = await bidi.read()
    assert fake_openai.disconnects == []
    await bidi.cancel("1")
    disconnect = await fake_openai.wait_for_disconnect()  # the upstream would send nothing more for an hour
    events = [first, *await bidi.until_end_of("1")]

    assert disconnect.model == ENDLESS
    assert texts(events) == "one"
    done = events[-1].done
    assert done.finish_reason == pb.FINISH_REASON_CANCELLED
    assert len(events) == 2
    # No usage from the upstream: completion tokens are the deltas received, marked as the gateway's estimate.
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (0, 1, 1)
    assert done.usage.estimated
    assert not done.usage.HasField("cost_usd")
    assert done.model == ENDLESS

    # The session goes on, and the conversation kept the partial reply.
    await bidi.turn("2", "next", model="gpt-test")
    assert texts(await bidi.until_end_of("2")) == "next"
    assert (await bidi.finish()).code == Code.OK
    assert [m["content"] for m in fake_openai.requests[-1].body["messages"]] == [
        EIGHT_WORDS,
        texts(events),
        "next",
    ]


async def test_cancel_of_a_waiting_turn_ends_it_without_an_upstream_call(
    stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    bidi = Bidi(stub)
    await bidi.start(SLOW)
    fake_openai.hold()
    await bidi.turn("1", "a b c d")
    await fake_openai.wait_for_requests(1)  # turn 1 runs, and cannot end before the release below
    await bidi.turn("2", "waiting")
    await bidi.cancel("2")
    cancelled = await bidi.until(lambda r: rid_of(r) == "2")
    fake_openai.release()
    outcome = await bidi.finish()

    assert outcome.code == Code.OK
    ends = [r for r in cancelled + outcome.responses if r.WhichOneof("kind") == "done"]
    assert [(d.done.request_id, d.done.finish_reason) for d in ends] == [
        ("2", pb.FINISH_REASON_CANCELLED),
        ("1", pb.FINISH_REASON_STOP),
    ]
    assert ends[0].done.usage.completion_tokens == 0
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize("finished", [False, True], ids=["unknown id", "finished id"])
async def test_cancel_of_an_unknown_or_finished_id_is_a_turn_error_and_the_session_goes_on(
    stub: pb_grpc.AIServiceAsyncStub, finished: bool
) -> None:
    bidi = Bidi(stub)
    await bidi.start("demo")
    if finished:
        await bidi.turn("x", "hello")
        await bidi.until_end_of("x")
    await bidi.cancel("x")
    error = await bidi.read()

    # TurnError.request_id is empty: the error ends no turn. The id is in the ErrorInfo and BadRequest.
    assert rid_of(error) == ""
    assert status_of(error) == (Code.INVALID_ARGUMENT.value[0], "UNKNOWN_REQUEST_ID")
    info = detail(error.error.status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert info.metadata["request_id"] == "x"
    assert info.metadata["session_request_id"] == header_of(await bidi.call.initial_metadata(), "x-request-id")
    bad_request = detail(error.error.status, error_details_pb2.BadRequest)
    assert bad_request is not None
    assert bad_request.field_violations[0].field == "cancel.request_id"
    await bidi.turn("y", "still here")
    assert texts(await bidi.until_end_of("y")) == "still here"
    assert (await bidi.finish()).code == Code.OK


# --- per-turn errors --------------------------------------------------------------------------------------


async def test_an_upstream_429_is_a_turn_error_with_retry_info_and_the_session_goes_on(
    stub: pb_grpc.AIServiceAsyncStub,
) -> None:
    bidi = Bidi(stub)
    await bidi.start("gpt-test", mode=pb.SESSION_MODE_PIPELINE)
    await bidi.turn("limited", "hello", model="fault-429")
    [error] = await bidi.until_end_of("limited")
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.Generate(pb.GenerateRequest(model="fault-429", messages=[pb.Message(role="user", content="hello")]))

    assert status_of(error) == (Code.RESOURCE_EXHAUSTED.value[0], "UPSTREAM_RATE_LIMITED")
    retry = detail(error.error.status, error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.seconds == 7
    assert decoded(error.error.status) == decoded(rich_status(unary.value)), "exactly what a unary call reports"
    await bidi.turn("after", "fine")
    assert texts(await bidi.until_end_of("after")) == "fine"
    assert (await bidi.finish()).code == Code.OK


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.model)
async def test_every_upstream_fault_is_the_turn_error_a_stream_call_gets(
    stub: pb_grpc.AIServiceAsyncStub, fault: Fault
) -> None:
    bidi = Bidi(stub)
    await bidi.start(fault.model, mode=pb.SESSION_MODE_PIPELINE)
    await bidi.turn("1", "hello brave world")
    events = await bidi.until_end_of("1")
    await bidi.finish()
    stream = await collect_stream(stub, request(fault.model))

    assert "".join(r.delta.text for r in events[:-1]) == "".join(fault.deltas_before)
    assert stream.error is not None
    assert status_of(events[-1]) == (fault.code.value[0], fault.reason)
    assert decoded(events[-1].error.status) == decoded(rich_status(stream.error))


async def test_an_invalid_turn_is_a_turn_error_listing_its_fields(stub: pb_grpc.AIServiceAsyncStub) -> None:
    bidi = Bidi(stub)
    await bidi.start("demo", system_prompt="sys")
    bad = pb.TurnRequest(
        request_id="bad",
        messages=[pb.Message(role="robot", content="x")],
        config=pb.GenerationConfig(temperature=9),
    )
    await bidi.send(message=bad)
    await bidi.turn("empty")
    await bidi.turn("nomodel", "hi", model="gpt-nope")
    errors = [await bidi.read() for _ in range(3)]
    await bidi.turn("fine", "ok")
    assert texts(await bidi.until_end_of("fine")) == "ok"
    assert (await bidi.finish()).code == Code.OK

    def fields(response: pb.InteractiveResponse) -> list[str]:
        bad_request = detail(response.error.status, error_details_pb2.BadRequest)
        assert bad_request is not None
        return [v.field for v in bad_request.field_violations]

    assert [rid_of(e) for e in errors] == ["bad", "empty", "nomodel"]
    assert fields(errors[0]) == ["messages[0].role", "config.temperature"]
    assert fields(errors[1]) == ["content"]
    assert status_of(errors[2]) == (Code.INVALID_ARGUMENT.value[0], "MODEL_NOT_FOUND")


# --- start ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "reason", "fields"),
    [
        (pb.SessionStart(model="gpt-nope"), "MODEL_NOT_FOUND", ["model"]),
        (pb.SessionStart(), "INVALID_REQUEST", ["model"]),
        (
            pb.SessionStart(model="demo", config=pb.GenerationConfig(top_p=2), mode=7, max_in_flight=-1),  # type: ignore[arg-type]
            "INVALID_REQUEST",
            ["config.top_p", "mode", "max_in_flight"],
        ),
    ],
    ids=["unknown model", "no model", "bad options"],
)
async def test_an_invalid_start_ends_the_stream_with_invalid_argument(
    stub: pb_grpc.AIServiceAsyncStub, start: pb.SessionStart, reason: str, fields: list[str]
) -> None:
    bidi = Bidi(stub)
    await bidi.send(start=start)
    outcome = await bidi.rest()

    assert (outcome.code, outcome.responses) == (Code.INVALID_ARGUMENT, [])
    assert outcome.error is not None
    assert error_info(outcome.error).reason == reason
    bad_request = detail(rich_status(outcome.error), error_details_pb2.BadRequest)
    assert bad_request is not None
    assert [v.field for v in bad_request.field_violations] == fields


async def test_a_pipeline_asking_for_more_in_flight_than_the_server_allows_is_capped(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    gateway = await make_gateway(openai_config(fake_openai.base_url, interactive=InteractiveConfig(max_in_flight=3)))
    async with stub_for(gateway) as stub:
        for asked, granted in [(0, 3), (2, 2), (100, 3)]:
            bidi = Bidi(stub)
            started = await bidi.start("demo", mode=pb.SESSION_MODE_PIPELINE, max_in_flight=asked)
            assert started.max_in_flight == granted
            await bidi.finish()


# --- half-close -------------------------------------------------------------------------------------------


async def test_half_close_lets_running_and_waiting_turns_finish_then_ends_with_ok(
    stub: pb_grpc.AIServiceAsyncStub,
) -> None:
    bidi = Bidi(stub)
    await bidi.start(SLOW, mode=pb.SESSION_MODE_PIPELINE, max_in_flight=2)
    for i in range(3):
        await bidi.turn(str(i), "a b c")
    outcome = await bidi.finish()

    assert outcome.code == Code.OK
    assert sorted(r.done.request_id for r in outcome.responses if r.WhichOneof("kind") == "done") == ["0", "1", "2"]
    assert outcome.kinds().count("delta") == 9


async def test_half_close_before_start_ends_with_ok_and_nothing_sent(stub: pb_grpc.AIServiceAsyncStub) -> None:
    outcome = await Bidi(stub).finish()
    assert (outcome.code, outcome.responses) == (Code.OK, [])


# --- protocol violations ----------------------------------------------------------------------------------

START = pb.InteractiveRequest(start=pb.SessionStart(model="demo"))
VIOLATIONS = {
    "message before start": ([pb.InteractiveRequest(message=pb.TurnRequest(request_id="1", content="hi"))], "`start`"),
    "cancel before start": ([pb.InteractiveRequest(cancel=pb.CancelTurn(request_id="1"))], "`start`"),
    "empty message": ([pb.InteractiveRequest()], "must set start, message or cancel"),
    "empty after start": ([START, pb.InteractiveRequest()], "must set start, message or cancel"),
    "second start": ([START, START], "came again"),
    "empty request_id": (
        [START, pb.InteractiveRequest(message=pb.TurnRequest(content="hi"))],
        "request_id is required",
    ),
    "empty cancel id": ([START, pb.InteractiveRequest(cancel=pb.CancelTurn())], "cancel.request_id is required"),
    "long request_id": (
        [START, pb.InteractiveRequest(message=pb.TurnRequest(request_id="x" * 129, content="hi"))],
        "longer than 128 bytes",
    ),
    "reused request_id": (
        [START, *[pb.InteractiveRequest(message=pb.TurnRequest(request_id="1", content="hi"))] * 2],
        "'1' is already used",
    ),
}


@pytest.mark.parametrize(("requests", "description"), VIOLATIONS.values(), ids=VIOLATIONS.keys())
async def test_a_protocol_violation_ends_the_stream_with_invalid_argument(
    stub: pb_grpc.AIServiceAsyncStub, requests: list[pb.InteractiveRequest], description: str
) -> None:
    bidi = Bidi(stub)
    for message in requests:
        await bidi.call.write(message)
    outcome = await bidi.rest()

    assert outcome.code == Code.INVALID_ARGUMENT
    assert outcome.error is not None
    assert description in (outcome.error.details() or "")
    assert (outcome.error.details() or "").startswith("protocol violation: ")
    assert error_info(outcome.error).reason == "PROTOCOL_VIOLATION"


async def test_a_violation_cancels_the_running_turns_and_closes_their_upstreams(
    stub: pb_grpc.AIServiceAsyncStub, fake_openai: FakeOpenAIUpstream
) -> None:
    bidi = Bidi(stub)
    await bidi.start(ENDLESS, mode=pb.SESSION_MODE_PIPELINE)
    await bidi.turn("1", EIGHT_WORDS)
    await bidi.read()
    await bidi.turn("1", "again")
    outcome = await bidi.rest()

    assert outcome.code == Code.INVALID_ARGUMENT
    assert (await fake_openai.wait_for_disconnect()).model == ENDLESS  # only the violation could end it


# --- limits -----------------------------------------------------------------------------------------------


async def test_with_max_queued_turns_waiting_the_server_reads_no_further(
    make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream
) -> None:
    config = openai_config(fake_openai.base_url)
    gateway = await make_gateway(replace(config, interactive=InteractiveConfig(max_queued_turns=1)))
    async with stub_for(gateway) as stub:
        bidi = Bidi(stub)
        await bidi.start(SLOW)
        fake_openai.hold()
        await bidi.turn("1", "a b c d")  # runs, held upstream until released
        await fake_openai.wait_for_requests(1)
        await bidi.turn("2", "b c d e f", model=ENDLESS)  # waits: the queue of waiting turns is full, so...
        await bidi.cancel("2")  # ...this is read only when turn 1 ends and turn 2 starts
        fake_openai.release()
        outcome = await bidi.finish()

    assert [(r.done.request_id, r.done.finish_reason) for r in outcome.responses if r.done.request_id] == [
        ("1", pb.FINISH_REASON_STOP),
        ("2", pb.FINISH_REASON_CANCELLED),
    ]
    await assert_no_session_left(gateway)


async def test_sessions_run_side_by_side(stub: pb_grpc.AIServiceAsyncStub) -> None:
    async def one(text: str) -> str:
        bidi = Bidi(stub)
        await bidi.start(SLOW)
        await bidi.turn("1", text)
        return texts((await bidi.finish()).responses)

    assert list(await asyncio.gather(one("a b c"), one("d e"), one("f"))) == ["a b c", "d e", "f"]
