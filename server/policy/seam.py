"""The one place every Generate, StreamGenerate, Embed, CountTokens and InteractiveStream turn passes through.

    servicer (service.py) ─┐                       ┌─► policies admit, in order (raise to refuse)
    session turn ──────────┴─► Seam.begin ─► Seam.complete / Seam.stream ─► router (routing/dispatch.py)
                              Seam.end ◄─ the call ends: its record is written, then admitted policies settle

Observers (the metrics, server/observe/metrics.py) see every record: `begun` when the call or turn
starts, `ended` right after the record is written, whether or not any policy admitted the call.

A policy sees each call twice: `admit` before anything is sent upstream (a GatewayError refuses the call
with that error's status), and `settle` once the call has ended, with the outcome, usage and cost in the
call's record. Every policy whose `admit` returned gets exactly one `settle`, whatever happened after it,
so a concurrency slot taken in `admit` is always given back.

A call keeps the router it began with (`CallContext.router`): a config reload (`Seam.swap`) gives new calls
the new catalog and providers while the calls and streams already running finish on the old ones, whose
connections are closed once the last of those calls has ended.

A policy may add trailing metadata to the call (`CallContext.trailers`, the rate-limit trailers of
policy/clients.py); the servicer sends them with the call's status. An InteractiveStream turn has no
trailers: it sends what is left of the client's limits (`CallContext.rate_limits`) in its TurnDone or
TurnError instead. The seam also tells the upstream who
is calling (`ChatRequest.user`, see policy/identity.py).

The seam adds nothing per token: `stream` admits the call, then hands back the router's own event stream.
`end` runs before the status is sent (see service.py), so the access log, metrics and traces written from
the record are complete when the client learns the outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from server.embedding import EmbedRequest, EmbedResult, TokenCount
from server.errors import GatewayError, ModelNotAllowed, QuotaExceeded, code_name
from server.observe.record import CallRecord
from server.observe.trace import CallTrace, Metadata, Tracing
from server.policy.headers import RateLimitsLeft
from server.policy.identity import upstream_user
from server.routing.catalog import Catalog, ModelConfig
from server.routing.dispatch import Router
from server.types import ChatRequest, Completion, StreamEvent

__all__ = ["CallContext", "ModelFilter", "Policy", "RecordObserver", "Seam"]

log = logging.getLogger(__name__)


class Policy(Protocol):
    async def admit(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> None:
        """Let the call through by returning; refuse it by raising a GatewayError."""

    def settle(self, call: CallContext) -> None:
        """The call has ended: its record holds the outcome, the usage and the cost."""


class ModelFilter(Protocol):
    """A policy that also decides which catalog models a client is shown (ListModels)."""

    def shows(self, client: str | None, model: ModelConfig) -> bool:
        """Whether `client` may see (and so call) `model`."""


class ModelFilteringPolicy(Policy, ModelFilter, Protocol):
    """A policy that is also a model filter (the clients' rules)."""


class RecordObserver(Protocol):
    def begun(self, record: CallRecord) -> None:
        """A call or turn starts (its record holds the method, the client and the model asked for)."""

    def ended(self, record: CallRecord) -> None:
        """The call or turn has ended and its record is written."""


@dataclass(slots=True)
class CallContext:
    """One call, or one InteractiveStream turn, as the seam and its policies see it."""

    record: CallRecord
    # The catalog and providers of the config this call began under; a reload does not change them.
    router: Router
    trace: CallTrace = field(default_factory=CallTrace)
    admitted: list[Policy] = field(default_factory=list)
    ended: bool = False
    # Trailing metadata policies add (the rate-limit trailers), sent with the call's status.
    trailers: tuple[tuple[str, str], ...] = ()
    # What is left of the client's rate limits once admitted (None without rate limits); `trailers` holds
    # the same as x-ratelimit-* metadata, a turn's TurnDone / TurnError as a RateLimits message.
    rate_limits: RateLimitsLeft | None = None

    @property
    def client(self) -> str | None:
        """The authenticated client's configured name (None without auth)."""
        return self.record.client


class Seam:
    def __init__(
        self,
        router: Router,
        policies: Sequence[Policy] = (),
        *,
        tracing: Tracing | None = None,
        observers: Sequence[RecordObserver] = (),
        model_filters: Sequence[ModelFilter] = (),
    ) -> None:
        self.router = router
        self.catalog: Catalog = router.catalog
        self._policies = tuple(policies)
        self.tracing = tracing or Tracing()
        self._observers = tuple(observers)
        self._calls_on: dict[Router, int] = {}  # routers with calls running: the current one, and retired ones
        self._closing: set[asyncio.Task[None]] = set()
        self._model_filters = tuple(model_filters)

    def swap(self, router: Router) -> None:
        """Send new calls to `router`; the one it replaces is closed once its last running call has ended."""
        retired, self.router, self.catalog = self.router, router, router.catalog
        if retired is not router and retired not in self._calls_on:
            self._close(retired)

    async def aclose(self) -> None:
        """Close the current router, and wait for the retired ones being closed."""
        await self.router.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close(self, router: Router) -> None:
        task = asyncio.get_running_loop().create_task(router.aclose(), name="close a retired router")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def replace_policy(self, old: ModelFilteringPolicy, new: ModelFilteringPolicy) -> None:
        """Let `new` admit (and filter models for) the calls that start from now on instead of `old` (a
        config reload); calls that `old` admitted still settle with it."""
        self._policies = tuple(new if p is old else p for p in self._policies)
        self._model_filters = tuple(new if f is old else f for f in self._model_filters)

    def models_for(self, client: str | None) -> list[ModelConfig]:
        """The catalog's models that `client` is shown (ListModels): those every model filter shows it."""
        return [m for m in self.catalog.models() if all(f.shows(client, m) for f in self._model_filters)]

    def begin(
        self,
        method: str,
        client: str | None,
        model: str = "",
        *,
        request_id: str = "",
        session: str = "",
        turn_request_id: str = "",
        parent: Metadata | CallTrace = (),
        priority: str = "interactive",
        end_user: str = "",
    ) -> CallContext:
        """A new call with its x-request-id, or an InteractiveStream turn (`session` and `turn_request_id`
        name it in the record; `request_id` is then its session's). `parent` is the caller's metadata
        (its traceparent), or for a turn its session's trace; `end_user` its checked x-end-user-id."""
        record = CallRecord(
            method,
            client,
            model=model,
            session=session,
            turn_request_id=turn_request_id,
            request_id=request_id,
            priority=priority,
            end_user=end_user,
        )
        router = self.router
        self._calls_on[router] = self._calls_on.get(router, 0) + 1
        call = CallContext(record, router, self.tracing.begin(record, parent))
        for observer in self._observers:
            observer.begun(record)
        return call

    async def complete(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> Completion:
        request = await self._admit(call, model, request)
        completion = await call.router.complete(model, request, call.trace)
        call.record.answered(completion)
        return completion

    async def embed(self, call: CallContext, model: ModelConfig, request: EmbedRequest) -> EmbedResult:
        """Admit the call (the policies see its texts as a prompt: EmbedRequest.as_chat), then embed."""
        chat = await self._admit(call, model, request.as_chat())
        result = await call.router.embed(model, replace(request, user=chat.user), call.trace)
        record = call.record
        record.served, record.usage, record.cost_usd = result.served, result.usage, result.cost_usd
        record.upstream_request_id = result.upstream_request_id
        return result

    async def count_tokens(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> TokenCount:
        """Admit the call, then count its request's input tokens (no usage: counting generates nothing)."""
        request = await self._admit(call, model, request)
        count = await call.router.count_tokens(model, request, call.trace)
        call.record.served, call.record.upstream_request_id = count.served, count.upstream_request_id
        return count

    async def stream(
        self, call: CallContext, model: ModelConfig, request: ChatRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        """Admit the call, then the router's event stream itself (close it with aclosing). The caller
        fills the record from the events it forwards: the seam adds no step per token."""
        request = await self._admit(call, model, request)
        return call.router.stream(model, request, call.trace)

    def end(self, call: CallContext, error: GatewayError | None = None, *, code: str | None = None) -> None:
        """The call has ended: OK, with `error`, or with `code` (CANCELLED). Write its record, then let
        every admitted policy settle. Runs once; later calls do nothing.

        `error` gets the request id in its metadata: `request_id`, or in an InteractiveStream, where
        `request_id` names a turn, `session_request_id`.
        """
        if call.ended:
            return
        call.ended = True
        self._release(call.router)
        record = call.record
        if error is not None:
            record.code, record.reason = code_name(error), error.reason
            if isinstance(error, QuotaExceeded):
                record.quota_limit = error.limit
            elif isinstance(error, ModelNotAllowed):
                record.quota_limit = "models"
            if record.request_id:
                error.metadata["session_request_id" if record.session else "request_id"] = record.request_id
            record.upstream_request_id = error.metadata.get("upstream_request_id", record.upstream_request_id)
        elif code is not None:
            record.code = code
        record.finish()
        call.trace.end(record)
        for observer in self._observers:
            try:
                observer.ended(record)
            except Exception as exc:  # as for policies below: a broken observer must not fail the call
                log.exception("observer %s failed on a %s record", type(observer).__name__, record.method, exc_info=exc)
        for policy in reversed(call.admitted):
            try:
                policy.settle(call)
            except Exception as exc:  # one policy's bug must not keep the others from settling
                log.exception(
                    "policy %s failed to settle a %s call", type(policy).__name__, record.method, exc_info=exc
                )

    def _release(self, router: Router) -> None:
        left = self._calls_on[router] - 1
        if left:
            self._calls_on[router] = left
            return
        del self._calls_on[router]
        if router is not self.router:  # retired by a reload, and its last call has ended
            self._close(router)

    async def _admit(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> ChatRequest:
        """Every policy admits the call (or one refuses it); then the request names its caller upstream."""
        for policy in self._policies:
            await policy.admit(call, model, request)
            call.admitted.append(policy)
        user = upstream_user(call.record.client, call.record.end_user)
        return replace(request, user=user) if user else request
