"""Interactive sessions of AsyncAIClient and AIClient against real gateways and the fake upstream.

The gateways run in the test's event loop, so the blocking client runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from client import (
    AIClient,
    AsyncAIClient,
    AuthenticationError,
    FinishReason,
    GatewayError,
    InvalidArgumentError,
    Message,
    RateLimitError,
    TextDelta,
    TurnEvent,
    TurnResult,
    UnavailableError,
    Usage,
)
from client.interactive import lost_to_a_drain
from server.app import Gateway
from server.defaults import SHUTDOWN_ABORT_LEAD_S
from server.resilience.retry import RetryPolicy
from tests.certs import CertFiles
from tests.conftest import CLIENT_TOKEN, ENDLESS, GatewayFactory, openai_config
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.interactive import assert_no_session_left, eventually

SLOW = "slow-tokens-50"
# A grace period no drain here comes near (the turn it lets finish takes 150 ms).
LONG_GRACE_S = 120.0
EIGHT_WORDS = "one two three four five six seven eight"


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, fake_openai: FakeOpenAIUpstream) -> Gateway:
    # One attempt per call, so that a fault reaches the turn at once.
    return await make_gateway(openai_config(fake_openai.base_url, retry=RetryPolicy(max_attempts=1)))


@pytest.fixture
async def client(gateway: Gateway) -> AsyncAIClient:
    return AsyncAIClient(target=f"127.0.0.1:{gateway.port}", plaintext=True)


@pytest.fixture
def target(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


# --- async ------------------------------------------------------------------------------------------------


async def test_a_conversation_streams_each_turn_and_keeps_the_history(client: AsyncAIClient, gateway: Gateway) -> None:
    async with client, client.interactive(model="demo", system="be brief") as session:
        assert (session.model, session.mode, session.max_in_flight) == ("demo", "conversation", 1)
        assert session.session_id
        events = [event async for event in session.send("hello brave world")]
        second = await session.send("again")

    assert events == [
        TextDelta("hello"),
        TextDelta(" brave"),
        TextDelta(" world"),
        TurnResult("t1", "hello brave world", "demo", "demo", FinishReason.STOP, Usage(5, 3, 8)),
    ]
    # The second turn was sent with the system prompt, the first turn and its reply: 2 + 3 + 3 + 1 words.
    assert second == TurnResult("t2", "again", "demo", "demo", FinishReason.STOP, Usage(9, 1, 10))
    await assert_no_session_left(gateway)


async def test_a_pipeline_yields_tagged_results_as_they_finish(
    client: AsyncAIClient, fake_openai: FakeOpenAIUpstream
) -> None:
    async with client, client.interactive(model=SLOW, mode="pipeline", max_in_flight=4) as session:
        assert (session.mode, session.max_in_flight) == ("pipeline", 4)
        prompts = {f"r{i}": " ".join(["w"] * (1 + i % 3)) + f" {i}" for i in range(12)}
        # The first four start upstream together: r3 (two words) then ends before r1 and r2 (three, four).
        fake_openai.hold()
        results_task = asyncio.create_task(anext_all(session.pipeline(prompts)))
        await fake_openai.wait_for_requests(4)
        fake_openai.release()
        results = await results_task
        listed = [result async for result in session.pipeline(["a b", [Message("user", "c")]])]

    assert sorted(r.request_id for r in results) == sorted(prompts)
    assert all(r.text == prompts[r.request_id] for r in results)
    assert [r.request_id for r in results] != list(prompts), "in the order they finish, not the order sent"
    assert sorted((r.request_id, r.text) for r in listed) == [("t1", "a b"), ("t2", "c")]


async def anext_all(results: AsyncIterator[TurnResult | BaseException]) -> list[TurnResult]:
    collected = []
    async for result in results:
        assert isinstance(result, TurnResult)
        collected.append(result)
    return collected


async def test_a_failed_turn_raises_its_error_and_the_session_goes_on(client: AsyncAIClient) -> None:
    async with client, client.interactive(model="gpt-test") as session:
        with pytest.raises(RateLimitError) as raised:
            await session.send("hello", model="fault-429")
        assert (await session.send("still here")).text == "still here"
        turn = session.send("x", model="nope")
        with pytest.raises(InvalidArgumentError) as invalid:
            async for _ in turn:
                pass
        assert [event async for event in turn] == []  # a failed turn's iteration stays over

    assert (raised.value.request_id, raised.value.reason, raised.value.retry_after) == (
        "t1",
        "UPSTREAM_RATE_LIMITED",
        7,
    )
    assert (invalid.value.request_id, invalid.value.reason) == ("t3", "MODEL_NOT_FOUND")


async def test_a_pipeline_raises_the_first_error_or_yields_every_one(client: AsyncAIClient) -> None:
    async with client:
        async with client.interactive(model="gpt-test", mode="pipeline") as session:
            with pytest.raises(InvalidArgumentError):
                async for _ in session.pipeline([[Message("robot", "x")]]):
                    pass
            mixed = {"ok": "fine", "bad": [Message("robot", "x")]}
            outcomes = [r async for r in session.pipeline(mixed, return_exceptions=True)]
        async with client.interactive(model="fault-429", mode="pipeline") as session:
            outcomes += [r async for r in session.pipeline({"limited": "x"}, return_exceptions=True)]

    by_id = {outcome.request_id: outcome for outcome in outcomes}
    assert isinstance(by_id["ok"], TurnResult)
    assert isinstance(by_id["bad"], InvalidArgumentError)
    assert isinstance(by_id["limited"], RateLimitError)


async def test_cancel_ends_the_turn_cancelled_with_its_partial_text(
    client: AsyncAIClient, fake_openai: FakeOpenAIUpstream
) -> None:
    async with client, client.interactive(model=ENDLESS) as session:
        turn = session.send(EIGHT_WORDS)
        first = await anext(aiter(turn))
        await turn.cancel()
        await fake_openai.wait_for_disconnect()  # the turn would not end by itself
        result = await turn
        await turn.cancel()  # a finished turn: nothing is sent
        later = await session.send("after", model="gpt-test")

    assert first == TextDelta("one")
    assert result.finish_reason is FinishReason.CANCELLED
    assert result.text == "one"
    assert result.usage.estimated
    assert later.text == "after"
    assert session.errors == []


async def test_a_cancel_that_names_no_turn_is_kept_as_a_session_error(client: AsyncAIClient) -> None:
    async with client, client.interactive(model="demo") as session:
        await session.cancel("nope")
        await session.send("hello")
    [error] = session.errors
    assert isinstance(error, InvalidArgumentError)
    assert (error.reason, error.metadata["request_id"], error.request_id) == ("UNKNOWN_REQUEST_ID", "nope", "")


async def test_an_invalid_start_raises_on_opening(client: AsyncAIClient) -> None:
    async with client:
        with pytest.raises(InvalidArgumentError) as raised:
            async with client.interactive(model="nope"):
                pass
    assert raised.value.reason == "MODEL_NOT_FOUND"


async def test_request_ids_of_running_turns_are_refused_and_closed_sessions_refuse_turns(
    client: AsyncAIClient,
) -> None:
    async with client, client.interactive(model=SLOW) as session:
        session.send("a b c", request_id="mine")
        with pytest.raises(ValueError, match="'mine'"):
            session.send("again", request_id="mine")
    with pytest.raises(RuntimeError, match="the session is closed"):
        session.send("late")


async def test_leaving_the_block_with_an_error_cancels_the_session(
    client: AsyncAIClient, gateway: Gateway, fake_openai: FakeOpenAIUpstream
) -> None:
    async with client:
        session = client.interactive(model=ENDLESS)
        turn = None
        with pytest.raises(KeyError):  # noqa: PT012  (the block is what is tested)
            async with session:
                turn = session.send(EIGHT_WORDS)
                await anext(aiter(turn))
                raise KeyError("boom")
        assert turn is not None
        await fake_openai.wait_for_disconnect()  # the turn would not end by itself
        with pytest.raises(GatewayError) as raised:
            await turn
    assert raised.value.code.name == "CANCELLED"
    await assert_no_session_left(gateway)


async def test_go_away_is_reported_and_new_turns_are_refused(client: AsyncAIClient, gateway: Gateway) -> None:
    async with client:
        session = client.interactive(model=SLOW)
        await session.open()
        running = session.send("a b c d")
        await anext(aiter(running))  # the gateway has it
        stopping = asyncio.create_task(gateway.stop(LONG_GRACE_S))
        await eventually(lambda: session.draining, "the session reads its go_away")
        refused = session.send("too late")
        assert (await running).finish_reason is FinishReason.STOP
        with pytest.raises(UnavailableError) as raised:
            await refused
        await session.close()
        await stopping

    assert session.time_left == pytest.approx(LONG_GRACE_S - SHUTDOWN_ABORT_LEAD_S)
    assert raised.value.reason == "SHUTTING_DOWN"


async def test_a_turn_sent_after_a_drain_ended_the_session_is_unavailable_not_unknown(
    client: AsyncAIClient, gateway: Gateway
) -> None:
    notified: list[float | None] = []
    async with client:
        session = client.interactive(model="demo")
        await session.open()
        session.add_go_away_callback(lambda s: notified.append(s.time_left))
        assert (await session.send("before")).text == "before"
        await gateway.stop(2.0)  # an idle session gets go_away and ends at once
        # the end of the stream reaches the client's reader (the timeout only guards against a hang)
        await asyncio.wait_for(session._ended.wait(), 30)
        late = session.send("after")
        with pytest.raises(UnavailableError) as raised:
            await late
        await session.close()
        session.add_go_away_callback(lambda s: notified.append(-1.0))  # after the fact: called at once

    assert notified == [pytest.approx(1.8), -1.0]
    error = raised.value
    assert (error.code.name, error.reason, error.domain, error.request_id) == (
        "UNAVAILABLE",
        "SHUTTING_DOWN",
        "client",
        "t2",
    )
    assert "send it in a new session" in error.message


async def test_a_turn_the_gateway_never_read_before_its_go_away_is_unavailable(
    client: AsyncAIClient, gateway: Gateway
) -> None:
    async with client:
        session = client.interactive(model="demo")
        await session.open()
        unread = session.send("in flight")  # queued in the client: nothing yields before the drain
        await gateway.service.announce_shutdown(2.0)
        with pytest.raises(UnavailableError) as raised:
            await unread
        await session.close()
    assert (raised.value.reason, raised.value.request_id) == ("SHUTTING_DOWN", "t1")
    assert "not processed" in raised.value.message


@pytest.mark.parametrize(
    ("code", "details", "draining", "lost"),
    [
        (grpc.StatusCode.INTERNAL, "Internal error from Core", True, True),
        (grpc.StatusCode.INTERNAL, "Internal error from Core", False, False),  # no go_away: a real failure
        (grpc.StatusCode.INTERNAL, "the gateway's own INTERNAL", True, False),  # a status the server sent
        (grpc.StatusCode.UNAVAILABLE, "Internal error from Core", True, False),
    ],
)
def test_only_grpcs_own_internal_after_a_go_away_counts_as_a_write_that_raced_the_drain(
    code: grpc.StatusCode, details: str, draining: bool, lost: bool
) -> None:
    # grpc/grpc#36066: a turn written in the instant the draining gateway ends the session replaces the
    # session's status with this INTERNAL; the race cannot be forced from a test, so the rule is pinned here.
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    assert lost_to_a_drain(error, draining) is lost


# --- sync -------------------------------------------------------------------------------------------------


async def test_the_blocking_client_has_the_same_sessions(target: str) -> None:
    def chat() -> tuple[list[TurnEvent], TurnResult, list[str], str]:
        with AIClient(target=target, plaintext=True) as client:
            with client.interactive(model="demo", system="be brief") as session:
                events = list(session.send("hello world"))
                second = session.send("again").result()
            with client.interactive(model="demo", mode="pipeline") as session:
                texts = sorted(r.text for r in session.pipeline(["b", "a", "c"]))
                try:
                    session.send("x", model="fault-429").result()
                except RateLimitError as exc:
                    failed = exc.request_id
        return events, second, texts, failed

    events, second, texts, failed = await asyncio.to_thread(chat)
    assert events[:2] == [TextDelta("hello"), TextDelta(" world")]
    assert isinstance(events[2], TurnResult)
    assert second.usage.prompt_tokens == 7
    assert texts == ["a", "b", "c"]
    assert failed == "t4"


async def test_the_blocking_client_cancels_a_turn(target: str, fake_openai: FakeOpenAIUpstream) -> None:
    def cancel() -> TurnResult:
        with AIClient(target=target, plaintext=True) as client, client.interactive(model=ENDLESS) as session:
            turn = session.send(EIGHT_WORDS)
            assert next(turn) == TextDelta("one")
            turn.cancel()
            return turn.result()

    result = await asyncio.to_thread(cancel)
    assert result.finish_reason is FinishReason.CANCELLED
    assert (await fake_openai.wait_for_disconnect()).model == ENDLESS


async def test_sessions_over_tls_need_the_token(secure_target: str, tls_files: CertFiles) -> None:
    def run(token: str | None) -> str:
        with (
            AIClient(target=secure_target, token=token, ca_file=tls_files.ca_cert) as client,
            client.interactive(model="gpt-test") as session,
        ):
            return session.send("secure hello").result().text

    assert await asyncio.to_thread(run, CLIENT_TOKEN) == "secure hello"
    with pytest.raises(AuthenticationError):
        await asyncio.to_thread(run, None)
