"""Conversions between the protobuf contract and the provider-neutral types, shared by every servicer.

Only this module, `service.py` and the InteractiveStream session import the generated protobuf code.
"""

from __future__ import annotations

from collections.abc import Iterable

from generated import ai_service_pb2 as pb
from server.routing.catalog import ModelConfig
from server.types import Completion, Finish, FinishReason, SamplingParams, Usage
from server.validation import UncheckedMessage

__all__ = [
    "FINISH_REASON_PB",
    "final_chunk",
    "generate_response",
    "model_info",
    "params_from_pb",
    "unchecked_messages",
    "usage_pb",
]

# FinishReason values are the proto enum numbers by design; this table makes the mapping explicit.
FINISH_REASON_PB = {reason: pb.FinishReason.ValueType(reason.value) for reason in FinishReason}


def params_from_pb(config: pb.GenerationConfig) -> SamplingParams:
    return SamplingParams(
        temperature=config.temperature if config.HasField("temperature") else None,
        max_tokens=config.max_tokens if config.HasField("max_tokens") else None,
        top_p=config.top_p if config.HasField("top_p") else None,
        stop=tuple(config.stop),
    )


def unchecked_messages(messages: Iterable[pb.Message]) -> list[UncheckedMessage]:
    return [UncheckedMessage(m.role, m.content, m.name) for m in messages]


def usage_pb(usage: Usage | None, cost_usd: float | None = None) -> pb.Usage:
    if usage is None:
        return pb.Usage(unreported=True)
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost_usd=cost_usd,
        estimated=usage.estimated,
    )


def final_chunk(finish: Finish) -> pb.StreamChunk:
    served = finish.served
    return pb.StreamChunk(
        is_complete=True,
        usage=usage_pb(finish.usage, finish.cost_usd),
        finish_reason=FINISH_REASON_PB[finish.reason],
        model=served.model if served else "",
        provider=served.provider if served else "",
        deployment=served.deployment if served else "",
        resumed=finish.resumed,
    )


def generate_response(completion: Completion) -> pb.GenerateResponse:
    served = completion.served
    return pb.GenerateResponse(
        content=completion.text,
        model=served.model if served else "",
        usage=usage_pb(completion.usage, completion.cost_usd),
        finish_reason=FINISH_REASON_PB[completion.reason],
        provider=served.provider if served else "",
        deployment=served.deployment if served else "",
    )


def model_info(model: ModelConfig, aliases: list[str]) -> pb.ModelInfo:
    deployments = model.all_deployments
    main = max(deployments, key=lambda d: d.weight)
    price = model.price
    return pb.ModelInfo(
        name=model.name,
        aliases=aliases,
        provider=main.provider,
        input_price_per_million=price.input_per_million if price else None,
        output_price_per_million=price.output_per_million if price else None,
        max_output_tokens=model.max_tokens,
        deployments=[
            pb.ModelDeployment(name=d.label, provider=d.provider, upstream_model=d.upstream_model, weight=d.weight)
            for d in deployments
        ],
        fallbacks=list(model.all_fallbacks),
    )
