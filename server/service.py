"""The AIService servicer: protobuf in, provider-neutral types to the policy seam, protobuf out.

Every failure leaves as a GatewayError through `errors.abort`; an unexpected exception is logged here
and reported as INTERNAL, never as UNKNOWN. The one thing it does besides: StreamGenerate counts the
messages it writes and tells the gRPC server metrics once (`messages_sent`), which is cheaper than a
counting context around every token's `write`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeAlias

import grpc

from generated import ai_service_pb2 as pb
from generated import ai_service_pb2_grpc as pb_grpc
from server import defaults
from server.auth import CURRENT_CLIENT
from server.config import InteractiveConfig
from server.convert import (
    count_tokens_response,
    embed_response,
    final_chunk,
    generate_response,
    model_info,
    params_from_pb,
    reasoning_chunk,
    task_type_from_pb,
    tool_call_chunk,
    unchecked_messages,
    unserved_needs,
)
from server.decoding import Malformed, malformed_request
from server.embed_checks import check_embed
from server.embedding import EmbedRequest
from server.errors import GatewayError, InternalError, ShuttingDown, abort
from server.interactive.session import SESSION_ID_HEADER, InteractiveSession
from server.observe.grpc_metrics import messages_sent
from server.observe.request_id import CURRENT_REQUEST_ID, REQUEST_ID_HEADER, bound_request_id, request_id_from
from server.policy.fair_queue import PRIORITY_HEADER, priority_class
from server.policy.identity import end_user_from
from server.policy.seam import CallContext, Seam
from server.routing.catalog import ModelConfig
from server.types import ChatRequest, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from server.validation import check_request

__all__ = ["COUNTS_ITS_WRITES", "AIService"]

log = logging.getLogger(__name__)

ServicerContext: TypeAlias = "grpc.aio.ServicerContext[object, object]"
Metadata: TypeAlias = "tuple[tuple[str, str], ...]"

# The methods whose handlers count the messages they write, for the gRPC server metrics (`messages_sent`):
# StreamGenerate's tokens then go to gRPC's own `write`, with no counting context in between.
COUNTS_ITS_WRITES = frozenset({f"/{pb.DESCRIPTOR.services_by_name['AIService'].full_name}/StreamGenerate"})


class AIService(pb_grpc.AIServiceServicer):
    def __init__(
        self,
        seam: Seam,
        *,
        max_request_bytes: int = defaults.MAX_REQUEST_CONTENT_BYTES,
        interactive: InteractiveConfig | None = None,
    ) -> None:
        self._seam = seam
        self._max_request_bytes = max_request_bytes
        self._interactive = interactive or InteractiveConfig()
        # Open InteractiveStream sessions, so that a drain can send each of them a go_away.
        self.sessions: set[InteractiveSession] = set()
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

    async def announce_shutdown(self, grace_s: float | None) -> None:
        """Refuse new calls, and send every open session a go_away with the time its turns have left
        (none when `grace_s` is None or 0: grpc then ends every call at once)."""
        self.draining = True
        time_left = max((grace_s or 0.0) - defaults.SHUTDOWN_ABORT_LEAD_S, 0.0)
        for session in self.sessions:
            session.go_away(time_left)

    @asynccontextmanager
    async def _call(
        self, context: ServicerContext, method: str, model: str = "", *, streaming: bool, headers: Metadata = ()
    ) -> AsyncIterator[CallContext]:
        """Run one call: track it for shutdown, end it with the status its failure deserves, and end it
        at the seam (its record written, its policies settled) before that status is sent.

        The call's request id (the caller's x-request-id, or a new one) is in the trailers whatever the
        status, and every log line of the call carries it. A `streaming` call also sends it at once in its
        initial metadata, with `headers`, so that the client has the id before the first token. A unary
        call that succeeds does not: grpc.aio cannot set initial metadata without sending it, and that send
        is a batch of its own whenever it is made (a socket write of its own, about 7 more system calls and
        55,000 more instructions a call, measured); its trailers travel with the answer at no cost. A unary
        call that fails names the id in its initial metadata too.

        A GatewayError becomes its own status (with `deltas_sent` when a stream had started), a
        cancellation by the shutdown becomes SHUTTING_DOWN, and anything else is a bug: logged here
        and reported as INTERNAL, never as UNKNOWN.
        """
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        metadata = tuple(context.invocation_metadata() or ())
        request_id = request_id_from(metadata)
        logged_as = CURRENT_REQUEST_ID.set(request_id)
        priority = priority_class(next((v for k, v in metadata if k == PRIORITY_HEADER), None))
        try:
            end_user, bad_end_user = end_user_from(metadata), None
        except GatewayError as error:
            end_user, bad_end_user = "", error
        call = self._seam.begin(
            method,
            CURRENT_CLIENT.get(),
            model,
            request_id=request_id,
            parent=metadata,
            priority=priority,
            end_user=end_user,
        )
        trailers = ((REQUEST_ID_HEADER, request_id),)
        try:
            context.set_trailing_metadata(trailers)
            if streaming:
                await context.send_initial_metadata((*trailers, *headers))
            if bad_end_user is not None:
                raise bad_end_user
            yield call
            if call.trailers:  # what the policies add: the rate-limit trailers of an admitted call
                context.set_trailing_metadata((*trailers, *call.trailers))
        except GatewayError as error:
            await self._fail(context, call, error, trailers, streaming)
        except asyncio.CancelledError:
            if self._ending_calls:
                ended = ShuttingDown("the gateway shut down before the call finished; retry on another instance")
                await self._fail(context, call, ended, trailers, streaming)
            self._seam.end(call, code="CANCELLED")
            raise
        except Exception as exc:  # the one catch-all
            log.exception("unexpected error in %s", method, exc_info=exc)
            internal = InternalError("internal gateway error; the gateway log has the details")
            await self._fail(context, call, internal, trailers, streaming)
        else:
            self._seam.end(call)
        finally:
            self._in_flight.discard(task)
            CURRENT_REQUEST_ID.reset(logged_as)

    async def _fail(
        self, context: ServicerContext, call: CallContext, error: GatewayError, trailers: Metadata, streaming: bool
    ) -> None:
        if call.record.deltas:
            error.metadata["deltas_sent"] = str(call.record.deltas)
        self._seam.end(call, error)  # before the status leaves: whoever reads the log after it finds the line
        if not streaming:
            await context.send_initial_metadata(trailers)  # a failed unary call names its id in its headers too
        await abort(context, error, (*trailers, *call.trailers))

    async def Generate(self, request: pb.GenerateRequest | Malformed, context: ServicerContext) -> pb.GenerateResponse:
        async with self._call(context, "Generate", _model_of(request), streaming=False) as call:
            model, chat = self._prepare(request, context, call)
            completion = await self._seam.complete(call, model, chat)
            # Built inside the call: a completion that cannot become a response is this call's failure,
            # logged as what the client gets, not OK.
            response = generate_response(completion)
        return response

    # The generated stub types streaming handlers as iterators only; grpc.aio also accepts a coroutine that
    # writes with context.write, which we use: a client's cancellation then arrives inside this frame, so
    # `aclosing` closes the provider stream (and the upstream response) at once, not when GC finds it.
    async def StreamGenerate(  # type: ignore[override]
        self, request: pb.StreamGenerateRequest | Malformed, context: ServicerContext
    ) -> None:
        async with self._call(context, "StreamGenerate", _model_of(request), streaming=True) as call:
            model, chat = self._prepare(request, context, call)
            record = call.record
            write, chunk = context.write, pb.StreamChunk  # the per-token path: no attribute lookups per token
            written = 0  # messages handed to gRPC, for its server metrics: told once (COUNTS_ITS_WRITES)
            try:
                async with aclosing(await self._seam.stream(call, model, chat)) as events:
                    async for event in events:
                        written += 1  # every event is one message
                        if type(event) is TextDelta:
                            if not record.deltas:
                                record.first_token()
                            # A delta may join several upstream deltas that arrived together (providers/http.py):
                            # one message instead of several, and `deltas` still counts the upstream's.
                            await write(chunk(delta=event.text))
                            record.deltas += event.pieces
                        elif type(event) is ToolCallDelta:
                            if not record.deltas:
                                record.first_token()
                            await context.write(tool_call_chunk(event))
                            record.deltas += 1
                        elif type(event) is ReasoningDelta:
                            if not record.deltas:
                                record.first_token()
                            await context.write(reasoning_chunk(event))
                            record.deltas += 1
                        else:
                            assert isinstance(event, Finish)
                            record.answered(event)
                            await context.write(final_chunk(event))
            finally:
                messages_sent(written)

    async def Embed(self, request: pb.EmbedRequest | Malformed, context: ServicerContext) -> pb.EmbedResponse:
        async with self._call(context, "Embed", _model_of(request), streaming=False) as call:
            model, embed = self._prepare_embed(request, context, call)
            response = embed_response(await self._seam.embed(call, model, embed))
        return response

    async def CountTokens(
        self, request: pb.CountTokensRequest | Malformed, context: ServicerContext
    ) -> pb.CountTokensResponse:
        async with self._call(context, "CountTokens", _model_of(request), streaming=False) as call:
            model, chat = self._prepare(request, context, call)
            response = count_tokens_response(await self._seam.count_tokens(call, model, chat))
        return response

    async def InteractiveStream(  # type: ignore[override]  # a writing coroutine, as StreamGenerate
        self, request_iterator: AsyncIterator[pb.InteractiveRequest | Malformed], context: ServicerContext
    ) -> None:
        session = InteractiveSession(
            self._seam, context, limits=self._interactive, max_request_bytes=self._max_request_bytes
        )
        self.sessions.add(session)
        try:
            # Headers at once, the session id among them: a client may wait for them before it writes.
            async with self._call(
                context, "InteractiveStream", streaming=True, headers=((SESSION_ID_HEADER, session.id),)
            ) as call:
                call.record.session = session.id
                session.record, session.trace = call.record, call.trace
                if self.draining:
                    raise ShuttingDown("the gateway is shutting down; retry on another instance")
                await session.run(request_iterator)
        finally:
            self.sessions.discard(session)

    async def ListModels(
        self, request: pb.ListModelsRequest | Malformed, context: ServicerContext
    ) -> pb.ListModelsResponse:
        """The catalog, as far as the calling client may use it (its `models`, server/policy/allowed.py)."""
        with bound_request_id(context.invocation_metadata()) as request_id:
            trailers = ((REQUEST_ID_HEADER, request_id),)
            context.set_trailing_metadata(trailers)
            if isinstance(request, Malformed):
                await abort(context, malformed_request(request), trailers)
            return self._list_models()

    def _list_models(self) -> pb.ListModelsResponse:
        catalog = self._seam.catalog
        models = self._seam.models_for(CURRENT_CLIENT.get())
        return pb.ListModelsResponse(models=[model_info(m, catalog.aliases_of(m.name)) for m in models])

    def _prepare_embed(
        self, request: pb.EmbedRequest | Malformed, context: ServicerContext, call: CallContext
    ) -> tuple[ModelConfig, EmbedRequest]:
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another instance")
        if isinstance(request, Malformed):
            raise malformed_request(request)
        catalog = call.router.catalog
        model = catalog.resolve(request.model) if len(request.model) <= defaults.MAX_MODEL_NAME_CHARS else None
        dimensions = request.dimensions if request.HasField("dimensions") else None
        texts = tuple(request.texts)
        check_embed(
            model=request.model,
            known_models=catalog.known_names,
            resolved=model is not None,
            texts=texts,
            dimensions=dimensions,
            max_content_bytes=self._max_request_bytes,
        )
        assert model is not None  # check_embed raised ModelNotFound otherwise
        headers = ((REQUEST_ID_HEADER, call.record.request_id),)
        task_type = task_type_from_pb(request.task_type)
        return model, EmbedRequest(model.name, texts, dimensions, task_type, context.time_remaining(), headers)

    def _prepare(
        self,
        request: pb.GenerateRequest | pb.StreamGenerateRequest | pb.CountTokensRequest | Malformed,
        context: ServicerContext,
        call: CallContext,
    ) -> tuple[ModelConfig, ChatRequest]:
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another instance")
        if isinstance(request, Malformed):
            raise malformed_request(request)
        catalog = call.router.catalog
        model = catalog.resolve(request.model)
        params = params_from_pb(request.config)
        messages = check_request(
            model=request.model,
            known_models=catalog.known_names,
            model_max_tokens=model.max_tokens if model else None,
            messages=unchecked_messages(request.messages),
            params=params,
            max_content_bytes=self._max_request_bytes,
        )
        assert model is not None  # check_request raised ModelNotFound otherwise
        headers = ((REQUEST_ID_HEADER, call.record.request_id),)
        needs = unserved_needs(request.messages, request.config)
        return model, ChatRequest(model.name, messages, params, context.time_remaining(), headers=headers, needs=needs)


def _model_of(
    request: pb.GenerateRequest | pb.StreamGenerateRequest | pb.EmbedRequest | pb.CountTokensRequest | Malformed,
) -> str:
    return "" if isinstance(request, Malformed) else request.model
