"""Client arguments to protobuf requests, and protobuf replies to client types."""

from __future__ import annotations

import pytest

from client.errors import StreamProtocolError
from client.types import FinishReason, Message, SamplingOptions, StreamEnd, TextDelta, Usage
from client.wire import StreamAssembler, build_request, generate_result
from generated import ai_service_pb2 as pb


def test_conversation_order_system_messages_prompt() -> None:
    request = build_request(
        pb.StreamGenerateRequest,
        model="demo",
        prompt="last",
        messages=[("user", "a"), Message("assistant", "b", name="bot"), pb.Message(role="user", content="c")],
        system="rules",
        sampling=SamplingOptions(),
    )
    assert [(m.role, m.content, m.name) for m in request.messages] == [
        ("system", "rules", ""),
        ("user", "a", ""),
        ("assistant", "b", "bot"),
        ("user", "c", ""),
        ("user", "last", ""),
    ]


def test_unset_options_stay_unset_and_zero_is_sent() -> None:
    unset = build_request(
        pb.GenerateRequest, model="m", prompt="p", messages=None, system=None, sampling=SamplingOptions()
    )
    assert not unset.config.HasField("temperature")
    assert not unset.config.HasField("max_tokens")
    assert not unset.config.HasField("top_p")
    zero = build_request(
        pb.GenerateRequest, model="m", prompt="p", messages=None, system=None,
        sampling=SamplingOptions(temperature=0.0, max_tokens=0, top_p=0.0, stop=["a", "b"]),
    )  # fmt: skip
    assert zero.config.HasField("temperature")
    assert zero.config.HasField("max_tokens")
    assert zero.config.HasField("top_p")
    assert list(zero.config.stop) == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (pb.FINISH_REASON_UNSPECIFIED, FinishReason.UNSPECIFIED),
        (pb.FINISH_REASON_STOP, FinishReason.STOP),
        (pb.FINISH_REASON_LENGTH, FinishReason.LENGTH),
        (pb.FINISH_REASON_CONTENT_FILTER, FinishReason.CONTENT_FILTER),
        (pb.FINISH_REASON_CANCELLED, FinishReason.CANCELLED),
        (pb.FINISH_REASON_TOOL_CALLS, FinishReason.TOOL_CALLS),
        (pb.FinishReason.ValueType(99), FinishReason.UNSPECIFIED),  # added to the contract later
    ],
)
def test_finish_reasons(value: pb.FinishReason.ValueType, reason: FinishReason) -> None:
    response = pb.GenerateResponse(content="x", model="m", provider="p", finish_reason=value)
    assert generate_result(response).finish_reason is reason


def test_every_proto_finish_reason_has_a_client_value() -> None:
    assert len(pb.FinishReason.keys()) == len(FinishReason)


def test_assembler_deltas_then_end() -> None:
    assembler = StreamAssembler()
    assert assembler.event(pb.StreamChunk(delta="hi")) == TextDelta("hi")
    final = pb.StreamChunk(
        is_complete=True,
        usage=pb.Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
        finish_reason=pb.FINISH_REASON_LENGTH,
        model="m",
        provider="p",
    )
    end = StreamEnd("m", "p", FinishReason.LENGTH, Usage(1, 2, 3))
    assert assembler.event(final) == end
    assert assembler.finish() == end


def test_assembler_rejects_missing_end() -> None:
    assembler = StreamAssembler()
    assembler.event(pb.StreamChunk(delta="hi"))
    with pytest.raises(StreamProtocolError, match="without its final chunk"):
        assembler.finish()


def test_assembler_rejects_data_after_end() -> None:
    assembler = StreamAssembler()
    assembler.event(pb.StreamChunk(is_complete=True))
    with pytest.raises(StreamProtocolError, match="after the final chunk"):
        assembler.event(pb.StreamChunk(delta="late"))


def test_sampling_keywords_override_the_options_object() -> None:
    base = SamplingOptions(temperature=0.5, max_tokens=10, stop=["x"])
    assert SamplingOptions.of(base, {"temperature": 0.0, "stop": ()}) == SamplingOptions(0.0, 10, None, ())
    assert SamplingOptions.of(None, {"top_p": 0.9}) == SamplingOptions(top_p=0.9)
    assert SamplingOptions.of(base, {}) == base


def test_signed_reasoning_blocks_come_back_with_the_calls_and_go_out_again() -> None:
    block = pb.ReasoningBlock(text="hmm", signature="c2ln", provider="claude")
    redacted = pb.ReasoningBlock(redacted="ZGF0YQ==", provider="claude")
    call = pb.ToolCall(id="toolu_1", name="get_weather", arguments="{}")
    usage = pb.Usage(prompt_tokens=9, cache_write_tokens=6, cache_write_1h_tokens=2)
    response = pb.GenerateResponse(
        tool_calls=[call], reasoning_blocks=[block, redacted], finish_reason=pb.FINISH_REASON_TOOL_CALLS, usage=usage
    )
    result = generate_result(response)
    assert result.usage.cache_write_1h_tokens == 2
    assert [(b.provider, b.text, b.signature, b.redacted) for b in result.reasoning_blocks] == [
        ("claude", "hmm", "c2ln", ""),
        ("claude", "", "", "ZGF0YQ=="),
    ]
    history = [
        Message("user", "weather?"),
        Message.calling(result.tool_calls, reasoning_blocks=result.reasoning_blocks),
    ]
    sent = build_request(
        pb.GenerateRequest, model="m", prompt=None, messages=history, system=None, sampling=SamplingOptions()
    )
    assert list(sent.messages[1].reasoning_blocks) == [block, redacted]
    assert list(sent.messages[1].tool_calls) == [call]
    # The final chunk of a stream carries them too.
    assembler = StreamAssembler()
    end = assembler.event(pb.StreamChunk(is_complete=True, reasoning_blocks=[block]))
    assert isinstance(end, StreamEnd)
    assert [b.signature for b in end.reasoning_blocks] == ["c2ln"]
