"""Dispatch: a catalog model and a request -> the deployment that serves this call -> a reply.

Each call picks one deployment of the model by weight, and the final event says who served it and what
it cost. What a name means is the catalog's business (server/routing/catalog.py).

A call is a series of attempts (server/routing/plan.py decides which deployment or fallback comes next).
Streams hold their first event (a text delta or the first piece of a tool call): a failure before it,
even inside an HTTP 200 stream, is retried or fallen back invisibly, so a client never sees pieces of two
attempts. After it, the loop only forwards and counts; a failure there ends the stream with the error,
its metadata naming the partial usage (`partial_completion_tokens`) and who served, unless the model
says `resume: continue` and no tool call has started (a half tool call cannot be continued exactly).
Every stream ends with exactly one Finish or one raised error.

A call that needs a capability (tools, a JSON format) that no deployment of its model has fails with
CapabilityUnsupported before any upstream call; the plan skips deployments and fallbacks that lack it.

Embed and CountTokens run the same plan as a unary Generate (retries, fallbacks, breakers); Embed needs the
"embeddings" capability, every generating call (CountTokens too) "chat", which an embedding model lacks
(server/routing/catalog.py), so deployments and fallbacks of the wrong kind are skipped. Neither has a
shadow.

A model with `shadow:` has a share of its calls also sent to a second target in the background
(server/observe/shadow.py); the call only tells its shadow its own text when it ends, so a shadowed stream
keeps its deltas' text (as a resumable one does) and an unshadowed one pays nothing for the feature.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import replace

from server import defaults
from server.config import GatewayConfig
from server.embedding import EmbedRequest, EmbedResult, TokenCount
from server.errors import CapabilityUnsupported, GatewayError, UpstreamBadResponse, UpstreamError, UpstreamUnavailable
from server.observe.shadow import ShadowCall, Shadows
from server.observe.trace import AttemptTrace, CallTrace
from server.providers import Provider, build_provider
from server.resilience.idle import IdleWatch
from server.resilience.resume import add_streamed, continuation
from server.routing.catalog import CHAT, Catalog, ModelConfig, cost_of
from server.routing.plan import Attempt, CallPlan, Resilience
from server.types import (
    ChatRequest,
    Completion,
    Finish,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = ["Router"]

_UNTRACED = CallTrace()
_CHAT = frozenset({CHAT})
_EMBEDDINGS = frozenset({"embeddings"})


class Router:
    """Dispatch: runs each call's plan (server/routing/plan.py) against the providers. What a name means is
    the catalog's business (server/routing/catalog.py)."""

    def __init__(
        self,
        catalog: Catalog,
        providers: Mapping[str, Provider],
        *,
        resilience: Resilience | None = None,
        rng: Callable[[], float] = random.random,
        kinds: Mapping[str, str] | None = None,
        shadows: Shadows | None = None,
    ) -> None:
        self.catalog = catalog
        self._providers = dict(providers)
        self.resilience = resilience or Resilience()
        self.resilience.pin(d for model in catalog.models() for d in model.all_deployments)
        self._rng = rng
        self._kinds = dict(kinds or {})  # provider name -> kind (openai, anthropic, …), for traces
        self.shadows = shadows or Shadows(catalog, self._providers)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Router:
        providers = {p.name: build_provider(p) for p in config.providers}
        catalog = Catalog(config.models, providers, dict(config.aliases))
        kinds = {p.name: p.kind for p in config.providers}
        return cls(catalog, providers, resilience=Resilience.from_config(config), kinds=kinds)

    def plan(self, model: ModelConfig, request: ChatRequest | EmbedRequest) -> CallPlan:
        needs = _EMBEDDINGS if isinstance(request, EmbedRequest) else request.capabilities_needed() | _CHAT
        lacking = model.lacks(needs)
        if lacking is not None:
            raise CapabilityUnsupported(model.name, lacking)
        return CallPlan(
            self.resilience,
            self.catalog,
            model,
            request.timeout_s,
            providers=self._providers,
            rng=self._rng,
            needs=needs,
        )

    def stream(
        self, model: ModelConfig, request: ChatRequest, trace: CallTrace = _UNTRACED
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream `request` from `model`, its deployments and fallbacks: TextDelta*, then one Finish that
        names who served, or an error. Close it (aclosing) to close the upstream request. Each attempt
        is traced in `trace`, and carries its trace context upstream."""
        return self._stream(model, request, trace)

    def _attempt_trace(self, trace: CallTrace, attempt: Attempt) -> AttemptTrace:
        kind = self._kinds.get(attempt.served.provider, "")
        return trace.attempt(attempt.served, attempt.deployment.upstream_model, kind, attempt.number)

    def _shadow(self, model: ModelConfig, request: ChatRequest, *, streaming: bool) -> ShadowCall | None:
        return self.shadows.start(model, request, streaming=streaming) if self.shadows else None

    async def _stream(
        self, model: ModelConfig, request: ChatRequest, trace: CallTrace
    ) -> AsyncGenerator[StreamEvent, None]:
        shadow = self._shadow(model, request, streaming=True)
        resumable = model.resume == "continue"
        # The text so far: a resumed stream continues from it, a shadow is compared with it.
        parts: list[str] | None = [] if resumable or shadow is not None else None
        answered: list[str] | None = None  # the whole text, once the Finish is on its way
        plan = self.plan(model, request)
        streamed = resumes = 0  # deltas sent over every attempt; resumes so far
        carried_cost: float | None = 0.0  # of the completion tokens of attempts cut mid-way
        current = request
        try:
            while True:
                attempt = await plan.next_attempt()
                with attempt, self._attempt_trace(trace, attempt) as traced:
                    timeouts = self.resilience.timeouts(attempt.deployment.provider)
                    events = attempt.provider.stream(_traced(plan.upstream_request(current, attempt), traced))
                    async with aclosing(events):
                        try:
                            first = await _first_event(events, timeouts.first_token_s, attempt)
                        except UpstreamError as error:
                            traced.failed(error)
                            plan.failed(attempt, error)
                            continue
                        attempt.succeeded()
                        if isinstance(first, Finish):
                            traced.answered(first)
                            answered = parts
                            yield _finished(first, attempt, streamed, resumes, carried_cost)
                            return
                        # From here on the client sees every event: forward and count, nothing more per token.
                        watch = IdleWatch(timeouts.idle_s, events)
                        failure: UpstreamError
                        try:
                            # Deltas the upstream sent (a coalesced TextDelta holds several): the gateway's
                            # own count of completion tokens when an attempt is cut.
                            watch.count = 1
                            if isinstance(first, ToolCallDelta):
                                parts = None  # a tool call has started: no exact continuation
                            elif isinstance(first, TextDelta):
                                watch.count = first.pieces
                                if parts is not None:
                                    parts.append(first.text)
                            yield first
                            async for event in events:
                                if isinstance(event, TextDelta):
                                    watch.count += event.pieces
                                    if parts is not None:
                                        parts.append(event.text)
                                    yield event
                                elif isinstance(event, ToolCallDelta):
                                    watch.count += 1
                                    parts = None
                                    yield event
                                elif isinstance(event, ReasoningDelta):
                                    watch.count += 1  # reasoning is not part of the reply a resume continues
                                    yield event
                                else:
                                    watch.stop()
                                    traced.answered(event)
                                    answered = parts
                                    yield _finished(event, attempt, streamed, resumes, carried_cost)
                                    return
                            failure = UpstreamBadResponse(
                                f"upstream {attempt.provider.name} ended the stream without finishing",
                                provider=attempt.provider.name,
                            )
                        except UpstreamError as mid_stream:
                            failure = mid_stream
                        except asyncio.CancelledError:
                            task = asyncio.current_task()
                            if not watch.expired or task is None or task.uncancel() > 0:
                                raise
                            failure = _idle_error(attempt, watch.timeout_s, "between tokens")
                        finally:
                            watch.stop()
                        streamed += watch.count
                        traced.failed(failure)
                        plan.failed(attempt, failure, mid_stream=True)
                        if parts is None or not resumable or resumes >= defaults.MAX_RESUMES:
                            raise failure
                        resumes += 1
                        cut_cost = cost_of(attempt.model, attempt.deployment, _tokens(watch.count))
                        carried_cost = _add(carried_cost, cut_cost)
                        current = continuation(request, "".join(parts), streamed)
        except GatewayError as error:
            if streamed:
                error.metadata["partial_completion_tokens"] = str(streamed)
            raise
        finally:
            if shadow is not None:
                shadow.primary_ended(None if answered is None else "".join(answered))

    async def complete(self, model: ModelConfig, request: ChatRequest, trace: CallTrace = _UNTRACED) -> Completion:
        """The whole reply to `request` from `model`, its deployments or its fallbacks."""
        shadow = self._shadow(model, request, streaming=False)
        if shadow is None:
            return await self._complete(model, request, trace)
        text = None
        try:
            completion = await self._complete(model, request, trace)
            text = completion.text
            return completion
        finally:
            shadow.primary_ended(text)

    async def _complete(self, model: ModelConfig, request: ChatRequest, trace: CallTrace) -> Completion:
        plan = self.plan(model, request)
        while True:
            attempt = await plan.next_attempt()
            with attempt, self._attempt_trace(trace, attempt) as traced:
                try:
                    completion = await attempt.provider.complete(
                        _traced(plan.upstream_request(request, attempt), traced)
                    )
                except UpstreamError as error:
                    traced.failed(error)
                    plan.failed(attempt, error)
                    continue
                attempt.succeeded()
                traced.answered(completion)
            cost = cost_of(attempt.model, attempt.deployment, completion.usage)
            return replace(completion, served=attempt.served, cost_usd=cost)

    async def embed(self, model: ModelConfig, request: EmbedRequest, trace: CallTrace = _UNTRACED) -> EmbedResult:
        """One vector per text from `model`, its deployments or its fallbacks that have "embeddings"."""
        plan = self.plan(model, request)
        while True:
            attempt = await plan.next_attempt()
            with attempt, self._attempt_trace(trace, attempt) as traced:
                upstream = replace(
                    request,
                    model=attempt.deployment.upstream_model,
                    timeout_s=max(plan.remaining(), 0.001),
                    headers=(*request.headers, *traced.headers),
                )
                try:
                    result = await attempt.provider.embed(upstream)
                except UpstreamError as error:
                    traced.failed(error)
                    plan.failed(attempt, error)
                    continue
                attempt.succeeded()
            cost = cost_of(attempt.model, attempt.deployment, result.usage)
            return replace(result, served=attempt.served, cost_usd=cost)

    async def count_tokens(self, model: ModelConfig, request: ChatRequest, trace: CallTrace = _UNTRACED) -> TokenCount:
        """The input tokens of `request` on `model`, its deployments or its fallbacks."""
        plan = self.plan(model, request)
        while True:
            attempt = await plan.next_attempt()
            with attempt, self._attempt_trace(trace, attempt) as traced:
                try:
                    count = await attempt.provider.count_tokens(
                        _traced(plan.upstream_request(request, attempt), traced)
                    )
                except UpstreamError as error:
                    traced.failed(error)
                    plan.failed(attempt, error)
                    continue
                attempt.succeeded()
            return replace(count, served=attempt.served)

    async def aclose(self) -> None:
        await self.shadows.aclose()  # before the providers close under them
        await asyncio.gather(*(provider.aclose() for provider in self._providers.values()))


def _traced(request: ChatRequest, traced: AttemptTrace) -> ChatRequest:
    """`request` with the attempt's trace context among its upstream headers."""
    return replace(request, headers=(*request.headers, *traced.headers)) if traced.headers else request


def _tokens(completion_tokens: int) -> Usage:
    return Usage(0, completion_tokens, completion_tokens, estimated=True)


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _finished(finish: Finish, attempt: Attempt, streamed: int, resumes: int, carried_cost: float | None) -> Finish:
    """The final event: who served, the cost, and for a resumed stream the usage of every attempt."""
    cost = cost_of(attempt.model, attempt.deployment, finish.usage)
    if not resumes:
        return replace(finish, served=attempt.served, cost_usd=cost)
    usage = add_streamed(finish.usage, streamed)
    return replace(finish, usage=usage, served=attempt.served, cost_usd=_add(cost, carried_cost), resumed=True)


async def _first_event(events: AsyncGenerator[StreamEvent, None], timeout_s: float, attempt: Attempt) -> StreamEvent:
    """The stream's first event, held back until it arrives: whatever fails before it can still be retried."""
    timer = asyncio.timeout(timeout_s)
    try:
        async with timer:
            return await anext(events)
    except TimeoutError:
        if not timer.expired():
            raise
        raise _idle_error(attempt, timeout_s, "waiting for the first token") from None
    except StopAsyncIteration:
        raise UpstreamBadResponse(
            f"upstream {attempt.provider.name} ended the stream without an event", provider=attempt.provider.name
        ) from None


def _idle_error(attempt: Attempt, timeout_s: float, phase: str) -> UpstreamError:
    name = attempt.provider.name
    return UpstreamUnavailable(
        f"upstream {name} sent nothing for {timeout_s:g} s ({phase})",
        provider=name,
        reason="UPSTREAM_STREAM_IDLE",
        metadata={"phase": phase, "timeout_s": f"{timeout_s:g}"},
    )
