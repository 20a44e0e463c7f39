"""Shadow traffic: a sampled share of a model's calls also goes, in the background, to a second target, whose
answer is measured and thrown away.

    Router call ──► Shadows.start(model, request) ── sampled? a slot free? ──► a task: ONE upstream call to
         │                         │ no slot: dropped, counted                the target, read to its end
         ▼                         ▼                                              │
    the caller's answer      (nothing else)                                       ▼
         └──── ShadowCall.primary_ended(text) ──────────────────────► compare the texts, then one ShadowResult
                                                                      to the observer (metrics) and one log line

The caller never waits for, sees or pays for the shadow: the task starts beside the call, the caller's
answer, errors, usage and cost are the primary's alone, and the shadow's own cost is counted apart
(`gateway_shadow_cost_usd_total`). A shadow makes one attempt: no retries, no fallbacks, and it neither
feeds nor reads the circuit breakers, retry budgets or upstream limits, so it cannot change how the
callers' own calls are routed. Its concurrency is bounded per model (`shadow.max_concurrent`); a call that
finds every slot taken is not shadowed, and is counted as dropped. It is bounded in time by the caller's
deadline (or the default request timeout) and cancelled when the gateway shuts down.

How far the texts differ: 1 - the Dice coefficient of their "shingles", the multisets of the words and of
the pairs of adjacent words among the first SHADOW_MAX_COMPARED_WORDS whitespace-separated words of each:

    difference = 1 - 2 * |A ∩ B| / (|A| + |B|)        0: the same words in the same order; 1: nothing shared

Words measure what was said, the pairs some of its order. It costs linear time (two Counters), so it runs
on the event loop; difflib's ratio, tried first, is quadratic at worst and took 3-4 times as long at 256
words and 4-8 times at 1,000 (measured side by side on a loaded machine). Measured only when both answered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Protocol

from server import defaults
from server.errors import GatewayError
from server.observe.request_id import REQUEST_ID_HEADER
from server.providers.base import Provider
from server.routing.catalog import Catalog, Deployment, ModelConfig, Shadow, cost_of
from server.routing.plan import pick
from server.types import ChatRequest, Finish, TextDelta, Usage

__all__ = ["NO_SHADOW_OBSERVER", "ShadowCall", "ShadowObserver", "ShadowResult", "Shadows", "text_difference"]

log = logging.getLogger("server.shadow")

_REQUEST_ID_SUFFIX = ".shadow"  # the shadow's x-request-id upstream: the call's, marked


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """What one shadow call did. `outcome` is ok, error (then `reason` says which) or cancelled."""

    model: str  # the caller's catalog model
    target: str  # the shadow's deployment label
    outcome: str
    streaming: bool
    duration_s: float
    ttft_s: float | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    difference: float | None = None
    reason: str = ""


class ShadowObserver(Protocol):
    def shadow_dropped(self, model: str, target: str) -> None:
        """A call of `model` was sampled, but every shadow slot was taken: no shadow call."""

    def shadow_ended(self, result: ShadowResult) -> None:
        """A shadow call ended (and was compared, when both answered)."""


class _NoObserver:
    def shadow_dropped(self, model: str, target: str) -> None:
        pass

    def shadow_ended(self, result: ShadowResult) -> None:
        pass


NO_SHADOW_OBSERVER: ShadowObserver = _NoObserver()


def text_difference(primary: str, shadow: str, max_words: int = defaults.SHADOW_MAX_COMPARED_WORDS) -> float:
    """1 - the Dice coefficient of the texts' word and word-pair multisets (first `max_words` words of each):
    0.0 the same, 1.0 nothing shared."""
    a, b = _shingles(primary, max_words), _shingles(shadow, max_words)
    total = a.total() + b.total()
    if not total:
        return 0.0
    return 1.0 - 2 * (a & b).total() / total


def _shingles(text: str, max_words: int) -> Counter[str]:
    words = text.split(maxsplit=max_words)[:max_words]
    shingles = Counter(words)
    shingles.update(f"{first} {second}" for first, second in itertools.pairwise(words))
    return shingles


@dataclass(slots=True)
class _Model:
    """One shadowed model: its setting, where its shadows go, and its slots."""

    shadow: Shadow
    target_model: ModelConfig | None  # a catalog model (a deployment picked by weight per call) ...
    target: tuple[ModelConfig, Deployment] | None  # ... or one deployment (and the model that prices it)
    in_flight: int = 0


class ShadowCall:
    """A shadow in flight; the call it shadows reports its own text (None: no answer) when it ends."""

    __slots__ = ("_primary",)

    def __init__(self) -> None:
        self._primary: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def primary_ended(self, text: str | None) -> None:
        if not self._primary.done():
            self._primary.set_result(text)

    async def primary_text(self) -> str | None:
        return await asyncio.shield(self._primary)


class Shadows:
    """The shadows of every model with a `shadow:` setting. `rng` samples the calls (random by default)."""

    def __init__(
        self,
        catalog: Catalog,
        providers: dict[str, Provider],
        *,
        rng: Callable[[], float] = random.random,
        observer: ShadowObserver = NO_SHADOW_OBSERVER,
    ) -> None:
        self._providers = providers
        self.rng = rng
        self.observer = observer
        self._models: dict[str, _Model] = {}
        for model in catalog.models():
            if model.shadow is not None and model.shadow.percent > 0:
                self._models[model.name] = _resolve(model, model.shadow, catalog)
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._models)

    def targets(self) -> list[tuple[str, str]]:
        """Every (shadowed model, target deployment label) pair a shadow call can have."""
        pairs = []
        for name, shadowed in self._models.items():
            if shadowed.target is not None:
                pairs.append((name, shadowed.target[1].label))
            elif shadowed.target_model is not None:
                pairs += [(name, d.label) for d in shadowed.target_model.all_deployments if d.weight > 0]
        return pairs

    def start(self, model: ModelConfig, request: ChatRequest, *, streaming: bool) -> ShadowCall | None:
        """A shadow of this call, started, or None (no shadow for the model, not sampled, or dropped)."""
        shadowed = self._models.get(model.name)
        if shadowed is None or self.rng() * 100 >= shadowed.shadow.percent:
            return None
        price_model, deployment = self._target(shadowed)
        if shadowed.in_flight >= shadowed.shadow.max_concurrent:
            self.observer.shadow_dropped(model.name, deployment.label)
            return None
        shadowed.in_flight += 1
        call = ShadowCall()
        run = _Run(model.name, price_model, deployment, self._providers[deployment.provider], streaming)
        task = asyncio.create_task(self._run(shadowed, run, call, _shadow_request(request, price_model, deployment)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return call

    async def aclose(self) -> None:
        """Cancel every shadow still running (the gateway is stopping) and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _target(self, shadowed: _Model) -> tuple[ModelConfig, Deployment]:
        if shadowed.target is not None:
            return shadowed.target
        assert shadowed.target_model is not None
        return shadowed.target_model, pick(shadowed.target_model, self.rng)

    async def _run(self, shadowed: _Model, run: _Run, call: ShadowCall, request: ChatRequest) -> None:
        try:
            await run.call(request)
        except asyncio.CancelledError:
            self._ended(run.result("cancelled"))
            raise
        finally:
            shadowed.in_flight -= 1
        outcome = "error" if run.reason else "ok"
        try:
            primary = await call.primary_text()  # the slot is free: waiting for a long primary holds none
        except asyncio.CancelledError:
            self._ended(run.result(outcome))  # the gateway stops before the primary ended: not compared
            raise
        difference = text_difference(primary, run.text) if outcome == "ok" and primary is not None else None
        self._ended(run.result(outcome, difference))

    def _ended(self, result: ShadowResult) -> None:
        try:
            self.observer.shadow_ended(result)
        except Exception as exc:  # a broken observer must not leave a task with an unretrieved exception
            log.exception("shadow observer failed", exc_info=exc)
        log.info(
            "shadow model=%s target=%s outcome=%s%s duration_ms=%.1f ttft_ms=%s tokens=%s cost_usd=%s difference=%s",
            result.model,
            result.target,
            result.outcome,
            f" reason={result.reason}" if result.reason else "",
            result.duration_s * 1000,
            f"{result.ttft_s * 1000:.1f}" if result.ttft_s is not None else "-",
            f"{result.usage.prompt_tokens}/{result.usage.completion_tokens}" if result.usage else "-",
            f"{result.cost_usd:.6f}" if result.cost_usd is not None else "-",
            f"{result.difference:.3f}" if result.difference is not None else "-",
            extra={"access": _fields(result)},
        )


class _Run:
    """One shadow call to its target: reads the whole answer, keeps the first words of its text."""

    __slots__ = (
        *("deployment", "duration_s", "model", "price_model", "provider", "reason", "started", "streaming"),
        *("text", "ttft_s", "usage"),
    )

    def __init__(
        self, model: str, price_model: ModelConfig, deployment: Deployment, provider: Provider, streaming: bool
    ) -> None:
        self.model, self.price_model, self.deployment = model, price_model, deployment
        self.provider, self.streaming = provider, streaming
        self.started = time.perf_counter()
        self.reason = ""
        self.duration_s = 0.0
        self.text = ""
        self.ttft_s: float | None = None
        self.usage: Usage | None = None

    async def call(self, request: ChatRequest) -> None:
        try:
            async with asyncio.timeout(request.timeout_s):
                if self.streaming:
                    await self._stream(request)
                else:
                    completion = await self.provider.complete(request)
                    self.text, self.usage = completion.text, completion.usage
        except GatewayError as error:
            self.reason = error.reason
        except TimeoutError:
            self.reason = "SHADOW_TIMEOUT"
        self.duration_s = time.perf_counter() - self.started

    async def _stream(self, request: ChatRequest) -> None:
        parts: list[str] = []
        words = 0
        async with aclosing(self.provider.stream(request)) as events:
            async for event in events:
                if type(event) is TextDelta:
                    if self.ttft_s is None:
                        self.ttft_s = time.perf_counter() - self.started
                    if words < defaults.SHADOW_MAX_COMPARED_WORDS:
                        parts.append(event.text)
                        words += event.text.count(" ") + 1
                elif isinstance(event, Finish):
                    self.usage = event.usage
        self.text = "".join(parts)

    def result(self, outcome: str, difference: float | None = None) -> ShadowResult:
        return ShadowResult(
            model=self.model,
            target=self.deployment.label,
            outcome=outcome,
            streaming=self.streaming,
            duration_s=time.perf_counter() - self.started if outcome == "cancelled" else self.duration_s,
            ttft_s=self.ttft_s,
            usage=self.usage,
            cost_usd=cost_of(self.price_model, self.deployment, self.usage) if outcome == "ok" else None,
            difference=difference,
            reason=self.reason,
        )


def _resolve(model: ModelConfig, shadow: Shadow, catalog: Catalog) -> _Model:
    """Where `model`'s shadows go (the config checks made sure the target exists)."""
    if shadow.model:
        target_model = catalog.resolve(shadow.model)
        assert target_model is not None, shadow.model
        return _Model(shadow, target_model, None)
    for candidate in catalog.models():
        for deployment in candidate.all_deployments:
            if deployment.label == shadow.deployment:
                return _Model(shadow, None, (candidate, deployment))
    # "provider/upstream_model" outside the catalog: priced as the shadowed model (else the built-in table).
    provider, _, upstream = shadow.deployment.partition("/")
    return _Model(shadow, None, (model, Deployment(provider, upstream)))


def _shadow_request(request: ChatRequest, price_model: ModelConfig, deployment: Deployment) -> ChatRequest:
    """The caller's request as the shadow's target receives it: its own upstream model and output cap, the
    call's deadline (or the default), and the call's request id marked as a shadow's."""
    headers = tuple((key, value + _REQUEST_ID_SUFFIX) for key, value in request.headers if key == REQUEST_ID_HEADER)
    return replace(
        request,
        model=deployment.upstream_model,
        max_output_tokens=price_model.max_tokens,
        timeout_s=request.timeout_s or defaults.REQUEST_TIMEOUT_S,
        headers=headers,
    )


def _fields(result: ShadowResult) -> dict[str, str | int | float | None]:
    """The result as flat keys for a JSON log line (server/observe/logs.py)."""
    usage = result.usage
    values: dict[str, str | int | float | None] = {
        "method": "shadow",
        "outcome": result.outcome,
        "model": result.model,
        "deployment": result.target,
        "reason": result.reason or None,
        "duration_ms": round(result.duration_s * 1000, 1),
        "ttft_ms": round(result.ttft_s * 1000, 1) if result.ttft_s is not None else None,
        "input_tokens": usage.prompt_tokens if usage else None,
        "output_tokens": usage.completion_tokens if usage else None,
        "cost_usd": result.cost_usd,
        "difference": round(result.difference, 4) if result.difference is not None else None,
    }
    return {key: value for key, value in values.items() if value is not None}
