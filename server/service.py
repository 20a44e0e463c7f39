"""The AIService servicer: protobuf in, provider-neutral types to the router, protobuf out. Nothing else.

Every failure leaves as a GatewayError through `errors.abort`; an unexpected exception is logged here
and reported as INTERNAL, never as UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, NoReturn, TypeAlias

import grpc

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server import defaults
from server.errors import GatewayError, InternalError, NotImplementedYet, ShuttingDown, abort
from server.routing import Route, Router
from server.types import ChatRequest, Finish, FinishReason, SamplingParams, TextDelta, Usage
from server.validation import UncheckedMessage, check_request

__all__ = ["AIService"]

log = logging.getLogger(__name__)

ServicerContext: TypeAlias = "grpc.aio.ServicerContext[object, object]"
# FinishReason values are the proto enum numbers by design; this table makes the mapping explicit.
_FINISH_REASON_PB = {reason: pb.FinishReason.ValueType(reason.value) for reason in FinishReason}


class AIService(pb_grpc.AIServiceServicer):
    def __init__(self, router: Router, *, max_request_bytes: int = defaults.MAX_REQUEST_CONTENT_BYTES) -> None:
        self._router = router
        self._max_request_bytes = max_request_bytes
        self.draining = False
        # Handler tasks of the calls in flight, so a shutdown can end them with an honest status.
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._ending_calls = False

    async def end_in_flight_calls(self) -> None:
        """End every call in flight with UNAVAILABLE SHUTTING_DOWN (the grace period is running out)."""
        self._ending_calls = True
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _track(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        return task

    async def _abort_if_shutting_down(self, context: ServicerContext, deltas_sent: int = 0) -> None:
        if self._ending_calls:
            error = ShuttingDown("the gateway shut down before the call finished; retry on another instance")
            if deltas_sent:
                error.metadata["deltas_sent"] = str(deltas_sent)
            await abort(context, error)

    async def Generate(self, request: pb.GenerateRequest, context: ServicerContext) -> pb.GenerateResponse:
        task = self._track()
        try:
            route, chat = self._prepare(request, context)
            completion = await route.provider.complete(chat)
        except GatewayError as error:
            await abort(context, error)
        except asyncio.CancelledError:
            await self._abort_if_shutting_down(context)
            raise
        except Exception as exc:  # the one catch-all: a bug becomes INTERNAL, never UNKNOWN
            await _abort_unexpected(context, exc, "Generate")
        finally:
            self._in_flight.discard(task)
        return pb.GenerateResponse(
            content=completion.text,
            model=route.model.name,
            usage=_usage_pb(completion.usage),
            finish_reason=_FINISH_REASON_PB[completion.reason],
            provider=route.provider.name,
        )

    # The generated stub types streaming handlers as iterators only; grpc.aio also accepts a coroutine that
    # writes with context.write, which we use: a client's cancellation then arrives inside this frame, so
    # `aclosing` closes the provider stream (and the upstream response) at once, not when GC finds it.
    async def StreamGenerate(  # type: ignore[override]
        self, request: pb.StreamGenerateRequest, context: ServicerContext
    ) -> None:
        deltas_sent = 0
        task = self._track()
        try:
            route, chat = self._prepare(request, context)
            async with aclosing(route.provider.stream(chat)) as events:
                async for event in events:
                    if type(event) is TextDelta:
                        await context.write(pb.StreamChunk(delta=event.text))
                        deltas_sent += 1
                    else:
                        await context.write(_final_chunk(event, route))  # type: ignore[arg-type]
        except GatewayError as error:
            if deltas_sent:
                error.metadata["deltas_sent"] = str(deltas_sent)
            await abort(context, error)
        except asyncio.CancelledError:
            await self._abort_if_shutting_down(context, deltas_sent)
            raise
        except Exception as exc:  # the one catch-all: a bug becomes INTERNAL, never UNKNOWN
            await _abort_unexpected(context, exc, "StreamGenerate")
        finally:
            self._in_flight.discard(task)

    async def InteractiveStream(  # type: ignore[override]  # a writing coroutine, as StreamGenerate
        self, request_iterator: AsyncIterator[pb.InteractiveRequest], context: ServicerContext
    ) -> None:
        await abort(
            context,
            NotImplementedYet("InteractiveStream is not implemented yet; use StreamGenerate for streaming replies"),
        )

    async def ListModels(self, request: pb.ListModelsRequest, context: ServicerContext) -> pb.ListModelsResponse:
        models = []
        for name in self._router.model_names:
            route = self._router.resolve(name)
            assert route is not None
            deployment = pb.ModelDeployment(
                name=route.model.name,
                provider=route.provider.name,
                upstream_model=route.model.upstream_model,
                weight=1.0,
            )
            models.append(
                pb.ModelInfo(
                    name=name,
                    provider=route.provider.name,
                    max_output_tokens=route.model.max_tokens,
                    deployments=[deployment],
                )
            )
        return pb.ListModelsResponse(models=models)

    def _prepare(
        self, request: pb.GenerateRequest | pb.StreamGenerateRequest, context: ServicerContext
    ) -> tuple[Route, ChatRequest]:
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another instance")
        route = self._router.resolve(request.model)
        config = request.config
        params = SamplingParams(
            temperature=config.temperature if config.HasField("temperature") else None,
            max_tokens=config.max_tokens if config.HasField("max_tokens") else None,
            top_p=config.top_p if config.HasField("top_p") else None,
            stop=tuple(config.stop),
        )
        messages = check_request(
            model=request.model,
            known_models=self._router.model_names,
            model_max_tokens=route.model.max_tokens if route else None,
            messages=[UncheckedMessage(m.role, m.content, m.name) for m in request.messages],
            params=params,
            max_content_bytes=self._max_request_bytes,
        )
        assert route is not None  # check_request raised ModelNotFound otherwise
        remaining = context.time_remaining()
        return route, ChatRequest(route.model.upstream_model, messages, params, remaining)


def _final_chunk(finish: Finish, route: Route) -> pb.StreamChunk:
    return pb.StreamChunk(
        is_complete=True,
        usage=_usage_pb(finish.usage),
        finish_reason=_FINISH_REASON_PB[finish.reason],
        model=route.model.name,
        provider=route.provider.name,
    )


def _usage_pb(usage: Usage | None) -> pb.Usage:
    if usage is None:
        return pb.Usage(unreported=True)
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


async def _abort_unexpected(context: ServicerContext, exc: Exception, method: str) -> NoReturn:
    log.exception("unexpected error in %s", method, exc_info=exc)
    await abort(context, InternalError("internal gateway error; the gateway log has the details"))
