"""A request that is not valid protobuf is INVALID_ARGUMENT `MALFORMED_REQUEST` on every method, with no
traceback in the log (issue 11, item 3): grpc.aio alone would answer UNKNOWN "Unexpected DecodeError"."""

from __future__ import annotations

import signal
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.message import Message

from generated import ai_service_pb2 as pb
from tests.process import run_gateway
from tests.rpc import error_info

pytestmark = pytest.mark.slow  # starts `python -m server`


def bad_utf8(message: Message) -> bytes:
    """`message` serialized with its string "demo" made invalid UTF-8: protobuf refuses the whole message."""
    return message.SerializeToString().replace(b"demo", b"de\xffo")


def truncated(message: Message) -> bytes:
    return message.SerializeToString()[:-2]


MESSAGES = {
    "Generate": pb.GenerateRequest(model="demo", messages=[pb.Message(role="user", content="hello")]),
    "StreamGenerate": pb.StreamGenerateRequest(model="demo", messages=[pb.Message(role="user", content="hello")]),
    "InteractiveStream": pb.InteractiveRequest(start=pb.SessionStart(model="demo", system_prompt="hello")),
}
# ListModelsRequest has no field, so only a cut field (of any number) breaks it.
BROKEN_LIST_MODELS = b"\x0a\x05ab"


def _raw(data: bytes) -> bytes:
    return data


@pytest.mark.parametrize("spoil", [bad_utf8, truncated], ids=["bad-utf8", "truncated"])
async def test_undecodable_requests_are_invalid_argument_on_every_method(spoil: Callable[[Message], bytes]) -> None:
    async with run_gateway("--listen", "127.0.0.1:0") as gateway:
        address = await gateway.wait_ready()
        async with grpc.aio.insecure_channel(address) as channel:
            errors: dict[str, grpc.aio.AioRpcError] = {}
            for method, payload in (("Generate", spoil(MESSAGES["Generate"])), ("ListModels", BROKEN_LIST_MODELS)):
                call = channel.unary_unary(f"/holysheepai.AIService/{method}", _raw, _raw)
                with pytest.raises(grpc.aio.AioRpcError) as unary:
                    await call(payload, timeout=30)
                errors[method] = unary.value
            stream = channel.unary_stream("/holysheepai.AIService/StreamGenerate", _raw, _raw)(
                spoil(MESSAGES["StreamGenerate"]), timeout=30
            )
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                await stream.read()
            errors["StreamGenerate"] = streamed.value
            bidi = channel.stream_stream("/holysheepai.AIService/InteractiveStream", _raw, _raw)(timeout=30)
            await bidi.write(spoil(MESSAGES["InteractiveStream"]))
            with pytest.raises(grpc.aio.AioRpcError) as session:
                await bidi.read()
            errors["InteractiveStream"] = session.value
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit() == 0

    types = {
        "Generate": "holysheepai.GenerateRequest",
        "ListModels": "holysheepai.ListModelsRequest",
        "StreamGenerate": "holysheepai.StreamGenerateRequest",
        "InteractiveStream": "holysheepai.InteractiveRequest",
    }
    for method, error in errors.items():
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.details())
        info = error_info(error)
        assert (info.reason, info.metadata["message_type"]) == ("MALFORMED_REQUEST", types[method])
        assert (error.details() or "").startswith(f"the request is not a valid {types[method]} protobuf message")
    for method in ("Generate", "StreamGenerate"):
        assert error_info(errors[method]).metadata["request_id"]
    assert "Traceback" not in gateway.stderr
    assert "DecodeError" not in gateway.stderr
    assert "code=INVALID_ARGUMENT reason=MALFORMED_REQUEST" in gateway.stderr  # the access log says what the client got
