"""Conversions between the protobuf contract and the provider-neutral types, shared by every servicer.

Only this module, `service.py` and the InteractiveStream session import the generated protobuf code.
"""

from __future__ import annotations

from collections.abc import Iterable

from generated import ai_service_pb2 as pb
from server.embedding import EmbedResult, TaskType, TokenCount
from server.routing.catalog import ModelConfig
from server.types import (
    Completion,
    Finish,
    FinishReason,
    Image,
    OutputFormat,
    Reasoning,
    ReasoningBlock,
    ReasoningDelta,
    ReasoningEffort,
    ResponseFormat,
    SamplingParams,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolMode,
    Usage,
)
from server.validation import UncheckedMessage

__all__ = [
    "FINISH_REASON_PB",
    "count_tokens_response",
    "embed_response",
    "final_chunk",
    "generate_response",
    "model_info",
    "params_from_pb",
    "reasoning_blocks_from_pb",
    "reasoning_blocks_pb",
    "reasoning_chunk",
    "task_type_from_pb",
    "tool_call_chunk",
    "tool_call_delta_pb",
    "tool_calls_pb",
    "unchecked_messages",
    "unserved_needs",
    "usage_pb",
]

# FinishReason values are the proto enum numbers by design; this table makes the mapping explicit.
FINISH_REASON_PB = {reason: pb.FinishReason.ValueType(reason.value) for reason in FinishReason}


_TOOL_MODES = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: ToolMode.AUTO,
    pb.TOOL_CHOICE_MODE_AUTO: ToolMode.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: ToolMode.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: ToolMode.REQUIRED,
    pb.TOOL_CHOICE_MODE_NAMED: ToolMode.NAMED,
}


def params_from_pb(config: pb.GenerationConfig) -> SamplingParams:
    return SamplingParams(
        temperature=config.temperature if config.HasField("temperature") else None,
        max_tokens=config.max_tokens if config.HasField("max_tokens") else None,
        top_p=config.top_p if config.HasField("top_p") else None,
        stop=tuple(config.stop),
        tools=tuple(Tool(t.name, t.description, t.parameters) for t in config.tools),
        tool_choice=_tool_choice(config.tool_choice) if config.HasField("tool_choice") else None,
        response_format=_response_format(config.response_format) if config.HasField("response_format") else None,
        reasoning=_reasoning(config.reasoning) if config.HasField("reasoning") else None,
    )


_EFFORTS = {
    pb.REASONING_EFFORT_LOW: ReasoningEffort.LOW,
    pb.REASONING_EFFORT_MEDIUM: ReasoningEffort.MEDIUM,
    pb.REASONING_EFFORT_HIGH: ReasoningEffort.HIGH,
}


def _reasoning(options: pb.ReasoningOptions) -> Reasoning:
    # An unknown effort number (a newer client) is the model's default, as UNSPECIFIED.
    budget = options.budget_tokens if options.HasField("budget_tokens") else None
    return Reasoning(_EFFORTS.get(options.effort), budget, options.include_reasoning)


def _tool_choice(choice: pb.ToolChoice) -> ToolChoice:
    # An unknown mode number (a newer client) is checked as NAMED without a name: refused, not guessed.
    return ToolChoice(_TOOL_MODES.get(choice.mode, ToolMode.NAMED), choice.name)


def _response_format(fmt: pb.ResponseFormat) -> ResponseFormat:
    match fmt.WhichOneof("format"):
        case "json_object":
            return ResponseFormat(OutputFormat.JSON_OBJECT)
        case "json_schema":
            js = fmt.json_schema
            return ResponseFormat(OutputFormat.JSON_SCHEMA, js.name, js.schema, js.strict, js.description)
        case _:
            return ResponseFormat(OutputFormat.TEXT)


def unchecked_messages(messages: Iterable[pb.Message]) -> list[UncheckedMessage]:
    return [
        UncheckedMessage(m.role, m.content, m.name)
        if not (m.tool_calls or m.tool_call_id or m.parts or m.HasField("cache_control") or m.reasoning_blocks)
        else UncheckedMessage(
            m.role,
            _with_text_parts(m),
            m.name,
            tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
            m.tool_call_id,
            cache=m.HasField("cache_control"),
            cache_ttl_s=m.cache_control.ttl.ToTimedelta().total_seconds() if m.cache_control.HasField("ttl") else None,
            images=tuple(
                (i, Image(p.image.url, p.image.data, p.image.mime_type))
                for i, p in enumerate(m.parts)
                if p.WhichOneof("kind") == "image"
            ),
            reasoning_blocks=reasoning_blocks_from_pb(m.reasoning_blocks),
        )
        for m in messages
    ]


def reasoning_blocks_from_pb(blocks: Iterable[pb.ReasoningBlock]) -> tuple[ReasoningBlock, ...]:
    return tuple(ReasoningBlock(b.provider, b.text, b.signature, b.redacted, b.tool_call_id) for b in blocks)


def reasoning_blocks_pb(blocks: Iterable[ReasoningBlock]) -> list[pb.ReasoningBlock]:
    return [
        pb.ReasoningBlock(
            text=b.text, signature=b.signature, redacted=b.redacted, provider=b.provider, tool_call_id=b.tool_call_id
        )
        for b in blocks
    ]


def _with_text_parts(message: pb.Message) -> str:
    """`content`, then each text part on a line of its own (a message's images follow its text)."""
    texts = [part.text for part in message.parts if part.WhichOneof("kind") == "text"]
    return "\n".join([message.content, *texts]) if message.content else "\n".join(texts)


def unserved_needs(messages: Iterable[pb.Message], config: pb.GenerationConfig) -> frozenset[str]:
    """Capabilities a request's messages and config ask for beyond what its params show: cache breakpoints
    ("prompt_caching"), reasoning options ("reasoning"), images ("vision"). A call whose model lacks one
    is refused with FAILED_PRECONDITION rather than sent without it."""
    needs: set[str] = set()
    if config.HasField("reasoning"):
        needs.add("reasoning")
    for message in messages:
        if message.HasField("cache_control"):
            needs.add("prompt_caching")
        if any(part.WhichOneof("kind") == "image" for part in message.parts):
            needs.add("vision")
    return frozenset(needs)


def tool_call_delta_pb(delta: ToolCallDelta) -> pb.ToolCallDelta:
    return pb.ToolCallDelta(index=delta.index, id=delta.id, name=delta.name, arguments=delta.arguments)


def tool_call_chunk(delta: ToolCallDelta) -> pb.StreamChunk:
    return pb.StreamChunk(tool_call=tool_call_delta_pb(delta))


def reasoning_chunk(delta: ReasoningDelta) -> pb.StreamChunk:
    return pb.StreamChunk(reasoning=delta.text)


def tool_calls_pb(calls: Iterable[ToolCall]) -> list[pb.ToolCall]:
    return [pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls]


def usage_pb(usage: Usage | None, cost_usd: float | None = None) -> pb.Usage:
    if usage is None:
        return pb.Usage(unreported=True)
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost_usd=cost_usd,
        estimated=usage.estimated,
        reasoning_tokens=usage.reasoning_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
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
        reasoning_blocks=reasoning_blocks_pb(finish.reasoning_blocks),
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
        tool_calls=tool_calls_pb(completion.tool_calls),
        reasoning=completion.reasoning,
        reasoning_blocks=reasoning_blocks_pb(completion.reasoning_blocks),
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
            pb.ModelDeployment(
                name=d.label,
                provider=d.provider,
                upstream_model=d.upstream_model,
                weight=d.weight,
                capabilities=sorted(model.capabilities if d.capabilities is None else d.capabilities),
            )
            for d in deployments
        ],
        fallbacks=list(model.all_fallbacks),
        capabilities=sorted(model.all_capabilities()),
    )


_TASK_TYPES: dict[int, TaskType] = {
    pb.EMBED_TASK_TYPE_RETRIEVAL_QUERY: TaskType.RETRIEVAL_QUERY,
    pb.EMBED_TASK_TYPE_RETRIEVAL_DOCUMENT: TaskType.RETRIEVAL_DOCUMENT,
    pb.EMBED_TASK_TYPE_SEMANTIC_SIMILARITY: TaskType.SEMANTIC_SIMILARITY,
    pb.EMBED_TASK_TYPE_CLASSIFICATION: TaskType.CLASSIFICATION,
    pb.EMBED_TASK_TYPE_CLUSTERING: TaskType.CLUSTERING,
}


def task_type_from_pb(value: int) -> TaskType | None:
    """The task type; unset or unknown (a newer client) is the provider's default."""
    return _TASK_TYPES.get(value)


def embed_response(result: EmbedResult) -> pb.EmbedResponse:
    served = result.served
    return pb.EmbedResponse(
        embeddings=[pb.Embedding(index=i, values=vector) for i, vector in enumerate(result.vectors)],
        model=served.model if served else "",
        provider=served.provider if served else "",
        deployment=served.deployment if served else "",
        usage=usage_pb(result.usage, result.cost_usd),
    )


def count_tokens_response(count: TokenCount) -> pb.CountTokensResponse:
    served = count.served
    return pb.CountTokensResponse(
        input_tokens=count.input_tokens,
        estimated=not count.exact,
        model=served.model if served else "",
        provider=served.provider if served else "",
        deployment=served.deployment if served else "",
        cached_tokens=count.cached_tokens,
    )
