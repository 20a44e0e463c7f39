"""The conformance table's rows for images: the same client request with an inline image and an image URL
gives the same client-visible answer from OpenAI-compatible, Anthropic and Gemini upstreams (their
byte-exact fakes), streamed and unary, each image in its provider's own shape on the wire; images a model
cannot take are refused before any upstream call, and bad images are INVALID_ARGUMENT naming the part.
"""

from __future__ import annotations

import base64
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2

from generated import ai_service_pb2 as pb
from server.app import Gateway
from server.config import TRANSPORTS, ModelConfig, default_config
from server.routing.catalog import DEFAULT_CAPABILITIES
from tests.conftest import GatewayFactory
from tests.integration.test_conformance import PRICE, Upstream, conformance_config, upstream
from tests.rpc import collect_stream, detail, error_info, rich_status, stub_for

__all__ = ["upstream"]  # the fixture, imported for pytest

Code = grpc.StatusCode
# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PNG_B64 = base64.b64encode(PNG).decode()
URL = "https://example.com/cat.jpg"


@pytest.fixture(params=TRANSPORTS)
async def gateway(make_gateway: GatewayFactory, upstream: Upstream, request: pytest.FixtureRequest) -> Gateway:
    """The conformance gateway plus `seer` (the fakes' echo, able to take images); `echo` cannot."""
    config = conformance_config(upstream.kind, upstream.fake.base_url, request.param)
    seer = ModelConfig(
        name="seer", provider=upstream.provider, upstream_model="seer", price=PRICE,
        capabilities=DEFAULT_CAPABILITIES | {"vision"},
    )  # fmt: skip
    return await make_gateway(replace(config, models=(*config.models, seer)))


def with_images(model: str = "seer") -> pb.StreamGenerateRequest:
    message = pb.Message(
        role="user",
        content="what are these",
        parts=[
            pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/png")),
            pb.ContentPart(text="two pictures"),
            pb.ContentPart(image=pb.Image(url=URL)),
        ],
    )
    return pb.StreamGenerateRequest(model=model, messages=[message])


EXPECTED_TEXT = "what are these\ntwo pictures"


def wire_images(kind: str, body: dict[str, object]) -> list[object]:
    """The images of the request's (only) message, as the upstream received them."""
    if kind == "gemini":
        parts = body["contents"][0]["parts"]  # type: ignore[index]
        return [p for p in parts if "text" not in p]
    content = body["messages"][0]["content"]  # type: ignore[index]
    return [b for b in content if b["type"] != "text"]


EXPECTED_WIRE = {
    "openai": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": URL}},
    ],
    "anthropic": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": URL}},
    ],
    "gemini": [
        {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": URL}},
    ],
}


async def test_images_reach_each_provider_in_its_shape_and_the_answer_is_the_same(
    gateway: Gateway, upstream: Upstream
) -> None:
    req = with_images()
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, req)
        response = await stub.Generate(pb.GenerateRequest(model="seer", messages=req.messages), timeout=10)

    assert outcome.error is None
    assert "".join(outcome.deltas) == EXPECTED_TEXT
    assert outcome.finals[0].finish_reason == pb.FINISH_REASON_STOP
    assert response.content == EXPECTED_TEXT
    for recorded in upstream.fake.requests:
        assert wire_images(upstream.kind, recorded.body) == EXPECTED_WIRE[upstream.kind]


async def test_images_to_a_model_without_vision_are_refused_before_any_upstream_call(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, with_images("echo"))

    assert outcome.chunks == []
    assert outcome.error is not None
    assert outcome.error.code() == Code.FAILED_PRECONDITION
    info = error_info(outcome.error)
    assert (info.reason, info.metadata["capability"]) == ("CAPABILITY_UNSUPPORTED", "vision")
    assert upstream.fake.requests == []


async def test_bad_images_are_invalid_argument_naming_each_part(gateway: Gateway, upstream: Upstream) -> None:
    messages = [
        pb.Message(
            role="user",
            content="look",
            parts=[
                pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/tiff")),
                pb.ContentPart(image=pb.Image(url="ftp://example.com/a.png")),
                pb.ContentPart(image=pb.Image(url="data:text/plain;base64,aGk=")),
                pb.ContentPart(image=pb.Image(mime_type="image/png")),
            ],
        ),
        pb.Message(role="assistant", parts=[pb.ContentPart(image=pb.Image(url=URL))]),
        pb.Message(role="user", content="and?"),
    ]
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="seer", messages=messages))

    assert outcome.chunks == []
    assert outcome.error is not None
    assert outcome.error.code() == Code.INVALID_ARGUMENT
    bad = detail(rich_status(outcome.error), error_details_pb2.BadRequest)
    assert bad is not None
    assert [v.field for v in bad.field_violations] == [
        "messages[0].parts[0].image.mime_type",
        "messages[0].parts[1].image.url",
        "messages[0].parts[2].image.url",
        "messages[0].parts[3].image",
        "messages[1].parts[0].image",
    ]
    assert upstream.fake.requests == []


async def test_too_many_images_are_invalid_argument(gateway: Gateway, upstream: Upstream) -> None:
    parts = [pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/png")) for _ in range(21)]
    messages = [pb.Message(role="user", content="so many", parts=parts)]
    async with stub_for(gateway) as stub:
        outcome = await collect_stream(stub, pb.StreamGenerateRequest(model="seer", messages=messages))

    assert outcome.error is not None
    assert outcome.error.code() == Code.INVALID_ARGUMENT
    bad = detail(rich_status(outcome.error), error_details_pb2.BadRequest)
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [("messages", "21 images; the limit is 20")]
    assert upstream.fake.requests == []


async def test_the_demo_says_what_it_sees(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(default_config(env={}, listen="127.0.0.1:0"))
    async with stub_for(gateway) as stub:
        response = await stub.Generate(pb.GenerateRequest(model="demo", messages=with_images("demo").messages))
    assert response.content == f"what are these\ntwo pictures [image/png image, {len(PNG)} bytes] [image at {URL}]"
