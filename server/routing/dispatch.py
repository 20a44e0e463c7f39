"""Model routing: the name a client sends -> a catalog model -> the deployment that serves this call.

Names resolve in this order: a catalog model (the config's models, then the built-in models of the
configured preset providers, named "provider/upstream_model"); an alias (the config's, the models', then
the built-in short names such as "gpt-4.1"); "provider/anything" for any configured provider, passed
through as the upstream model name. Each call picks one deployment of the model by weight, and the final
event says who served it and what it cost.

A call is a series of attempts (server/routing/plan.py decides which deployment or fallback comes next).
Streams hold their first event: a failure before it, even inside an HTTP 200 stream, is retried or
fallen back invisibly. After it, the loop only forwards and counts; a failure there ends the stream with
the error, its metadata naming the partial usage (`partial_completion_tokens`) and who served, unless
the model says `resume: continue`. Every stream ends with exactly one Finish or one raised error.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import replace

from server import defaults
from server.config import GatewayConfig
from server.errors import GatewayError, UpstreamBadResponse, UpstreamError, UpstreamUnavailable
from server.providers import Provider, build_provider
from server.resilience.idle import IdleWatch
from server.resilience.resume import add_streamed, continuation
from server.routing.catalog import BUILTIN_ALIASES, BUILTIN_MODELS, Deployment, ModelConfig, builtin_price
from server.routing.plan import Attempt, CallPlan, Resilience
from server.types import ChatRequest, Completion, Finish, StreamEvent, TextDelta, Usage

__all__ = ["Router"]


class Router:
    def __init__(
        self,
        models: Sequence[ModelConfig],
        providers: Mapping[str, Provider],
        aliases: Mapping[str, str] | None = None,
        *,
        rng: Callable[[], float] = random.random,
        resilience: Resilience | None = None,
    ) -> None:
        self._providers = dict(providers)
        self._rng = rng
        self.resilience = resilience or Resilience()
        self._models: dict[str, ModelConfig] = {}
        for model in models:
            self._models[model.name] = model
        for name, builtin in BUILTIN_MODELS.items():  # after the config's: a config model of that name wins
            if builtin.provider in self._providers and name not in self._models:
                self._models[name] = builtin
        self._aliases: dict[str, str] = {}
        for alias, target in BUILTIN_ALIASES.items():
            if target in self._models and alias not in self._models:
                self._aliases[alias] = target
        for model in models:
            self._aliases.update(dict.fromkeys(model.aliases, model.name))
        self._aliases.update(aliases or {})

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Router:
        providers = {p.name: build_provider(p) for p in config.providers}
        return cls(config.models, providers, dict(config.aliases), resilience=Resilience.from_config(config))

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    @functools.cached_property
    def known_names(self) -> tuple[str, ...]:
        """Every name a client may send, aliases included (not the open-ended "provider/anything").

        The catalog is fixed once the router is built, so this is sorted once, not on every call."""
        return tuple(sorted({*self._models, *self._aliases}))

    def aliases_of(self, model: str) -> list[str]:
        return sorted(alias for alias, target in self._aliases.items() if target == model)

    def resolve(self, name: str) -> ModelConfig | None:
        model = self._models.get(name)
        if model is not None:
            return model
        target = self._aliases.get(name)
        if target is not None:
            return self._models.get(target) or self._passthrough(target)
        return self._passthrough(name)

    def _passthrough(self, name: str) -> ModelConfig | None:
        provider, sep, upstream = name.partition("/")
        if not sep or not upstream or provider not in self._providers:
            return None
        return ModelConfig(name=name, provider=provider, upstream_model=upstream)

    def pick(self, model: ModelConfig) -> Deployment:
        """One deployment of `model`, chosen by weight."""
        deployments = model.all_deployments
        if len(deployments) == 1:
            return deployments[0]
        point = self._rng() * sum(d.weight for d in deployments)
        for deployment in deployments:
            point -= deployment.weight
            if point < 0:
                return deployment
        return next(d for d in reversed(deployments) if d.weight > 0)

    def failover_order(self, model: ModelConfig) -> list[Deployment]:
        """The deployment picked by weight, then the others by weight (weight 0: standby, tried last)."""
        picked = self.pick(model)
        if len(model.all_deployments) == 1:
            return [picked]
        return [picked, *sorted((d for d in model.all_deployments if d is not picked), key=lambda d: -d.weight)]

    def plan(self, model: ModelConfig, request: ChatRequest) -> CallPlan:
        return CallPlan(
            self.resilience,
            model,
            request.timeout_s,
            providers=self._providers,
            resolve=self.resolve,
            failover_order=self.failover_order,
        )

    def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream `request` from `model`, its deployments and fallbacks: TextDelta*, then one Finish that
        names who served, or an error. Close it (aclosing) to close the upstream request."""
        return self._stream(model, request)

    async def _stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        plan = self.plan(model, request)
        parts: list[str] | None = [] if model.resume == "continue" else None
        streamed = resumes = 0  # deltas sent over every attempt; resumes so far
        carried_cost: float | None = 0.0  # of the completion tokens of attempts cut mid-way
        current = request
        try:
            while True:
                attempt = await plan.next_attempt()
                with attempt:
                    timeouts = self.resilience.timeouts(attempt.deployment.provider)
                    events = attempt.provider.stream(plan.upstream_request(current, attempt))
                    async with aclosing(events):
                        try:
                            first = await _first_event(events, timeouts.first_token_s, attempt)
                        except UpstreamError as error:
                            plan.failed(attempt, error)
                            continue
                        attempt.succeeded()
                        if not isinstance(first, TextDelta):
                            yield _finished(first, attempt, streamed, resumes, carried_cost)
                            return
                        # From here on the client sees every event: forward and count, nothing more per token.
                        watch = IdleWatch(timeouts.idle_s, events)
                        failure: UpstreamError
                        try:
                            watch.count = 1
                            if parts is not None:
                                parts.append(first.text)
                            yield first
                            async for event in events:
                                if isinstance(event, TextDelta):
                                    watch.count += 1
                                    if parts is not None:
                                        parts.append(event.text)
                                    yield event
                                else:
                                    watch.stop()
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
                        plan.failed(attempt, failure, mid_stream=True)
                        if parts is None or resumes >= defaults.MAX_RESUMES:
                            raise failure
                        resumes += 1
                        cut_cost = _cost(attempt.model, attempt.deployment, _tokens(watch.count))
                        carried_cost = _add(carried_cost, cut_cost)
                        current = continuation(request, "".join(parts), streamed)
        except GatewayError as error:
            if streamed:
                error.metadata["partial_completion_tokens"] = str(streamed)
            raise

    async def complete(self, model: ModelConfig, request: ChatRequest) -> Completion:
        """The whole reply to `request` from `model`, its deployments or its fallbacks."""
        plan = self.plan(model, request)
        while True:
            attempt = await plan.next_attempt()
            with attempt:
                try:
                    completion = await attempt.provider.complete(plan.upstream_request(request, attempt))
                except UpstreamError as error:
                    plan.failed(attempt, error)
                    continue
                attempt.succeeded()
            cost = _cost(attempt.model, attempt.deployment, completion.usage)
            return replace(completion, served=attempt.served, cost_usd=cost)

    async def aclose(self) -> None:
        await asyncio.gather(*(provider.aclose() for provider in self._providers.values()))


def _cost(model: ModelConfig, deployment: Deployment, usage: Usage | None) -> float | None:
    price = model.price or builtin_price(deployment.upstream_model)
    if price is None or usage is None:
        return None
    return price.cost(usage)


def _tokens(completion_tokens: int) -> Usage:
    return Usage(0, completion_tokens, completion_tokens, estimated=True)


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _finished(finish: Finish, attempt: Attempt, streamed: int, resumes: int, carried_cost: float | None) -> Finish:
    """The final event: who served, the cost, and for a resumed stream the usage of every attempt."""
    cost = _cost(attempt.model, attempt.deployment, finish.usage)
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
