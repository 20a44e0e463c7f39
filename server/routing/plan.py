"""One call's attempts: which deployment is tried next, how long to wait before it, and when to give up.

The order of candidates:

    1. the model's deployments: the one picked by weight, then the others by weight (a weight-0
       deployment is a standby: never picked first, tried last); round robin over them, at most
       `retry.max_attempts` attempts for the model;
    2. then the model's fallbacks, each the same way: the chain configured for the failure class of the
       last error (`rate_limited`, `unavailable`), else the default chain. Fallbacks of fallbacks are not
       followed, and a model appears once.

A candidate is skipped (no attempt, nothing counted) when it lacks a capability the call needs (tools, a
JSON format: a fallback model with no deployment that has them is not tried at all), while it is out of
this call (its Retry-After was
over `retry.retry_after_cap_s`, or it failed mid-stream), when its wait would end too close to the
deadline, when its provider is at its concurrency limit, when its circuit breaker is open, or when the
attempt would be a retry and its provider's retry budget is empty. Waits apply only to trying the same
deployment again; another deployment or a fallback is tried at once, and a wait longer than
`retry.backoff_cap_s` (a long Retry-After) is made only when no fallback is left: otherwise the call moves
on to the fallbacks. The process-wide limit refuses the whole call.

Giving up raises the last upstream error with metadata `attempts` and `retry_stopped_by` (`max_attempts`,
`deadline`, `retry_budget`, `retry_after_cap`, `circuit_open`, `overloaded`, `failed_mid_stream`); when
no attempt could be made at all, GatewayOverloaded (RESOURCE_EXHAUSTED + RetryInfo) or CircuitOpen, which
says what the open breaker's last counted failure was.

Breakers count calls, not attempts: a call reports at most one failure per deployment to its breaker,
however many times it tried that deployment (through the model or a fallback that shares it). So a breaker opens only
after failures of several calls (`consecutive_failures` of them), each of which reports the upstream's
own error; CIRCUIT_OPEN is for the calls after that, which it spares the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType

from server import defaults
from server.config import GatewayConfig, ProviderConfig
from server.errors import CircuitOpen, GatewayError, GatewayOverloaded, UpstreamError, UpstreamTimeout, scrub
from server.observe.record import log_value
from server.providers.base import Provider
from server.resilience.breaker import Admission, BreakerPolicy, CircuitBreaker
from server.resilience.limits import UpstreamLimits
from server.resilience.retry import FailureClass, RetryBudget, RetryPolicy, classify
from server.routing.catalog import Catalog, Deployment, ModelConfig
from server.routing.observer import NO_OBSERVER, PlanObserver
from server.types import ChatRequest, Served

__all__ = ["Attempt", "CallPlan", "Resilience", "StreamTimeouts", "failover_order", "pick"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    """A provider's stream timers: the wait for the first token, and the silence allowed after it."""

    first_token_s: float = defaults.FIRST_TOKEN_TIMEOUT_S
    idle_s: float = defaults.STREAM_IDLE_TIMEOUT_S


class Resilience:
    """What every call shares: the policies, a breaker per deployment, a retry budget per provider, the
    concurrency limits, and the clock, sleep and random source (injected by unit tests).

    The catalog's deployments (`pin`) keep their breakers for good; a "provider/anything" pass-through name
    is the client's choice, so its breaker is kept only among the `max_passthrough_breakers` most recently
    used ones: inventing names cannot grow the gateway's memory. A pass-through breaker that is evicted
    starts closed when its name comes back.
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        limits: UpstreamLimits | None = None,
        timeouts: Mapping[str, StreamTimeouts] | None = None,
        overload_retry_after_s: float = defaults.OVERLOAD_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        max_passthrough_breakers: int = defaults.MAX_PASSTHROUGH_BREAKERS,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.breaker_policy = breaker or BreakerPolicy()
        self.limits = limits or UpstreamLimits(defaults.MAX_CONCURRENT_UPSTREAM, {})
        self.overload_retry_after_s = overload_retry_after_s
        self.clock, self.sleep, self.rng = clock, sleep, rng
        self._timeouts = dict(timeouts or {})
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}  # the catalog's deployments
        self._pinned: frozenset[tuple[str, str]] = frozenset()
        self._passthrough: OrderedDict[tuple[str, str], CircuitBreaker] = OrderedDict()  # least recent first
        self._max_passthrough = max_passthrough_breakers
        self._budgets: dict[str, RetryBudget] = {}
        self.observer: PlanObserver = NO_OBSERVER  # the metrics, when on (server/observe/metrics.py)
        self._breaker_watchers: list[Callable[[CircuitBreaker], None]] = []

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Resilience:
        return cls(
            retry=config.retry,
            breaker=config.circuit_breaker,
            limits=UpstreamLimits(
                config.limits.max_concurrent_upstream,
                {p.name: p.max_concurrent_streams or p.max_connections for p in config.providers},
            ),
            timeouts={p.name: _timeouts(p) for p in config.providers},
            overload_retry_after_s=config.limits.retry_after_s,
        )

    def timeouts(self, provider: str) -> StreamTimeouts:
        return self._timeouts.get(provider) or StreamTimeouts()

    def pin(self, deployments: Iterable[Deployment]) -> None:
        """The catalog's deployments: their breakers are never evicted."""
        self._pinned = self._pinned | {_key(d) for d in deployments}

    def breaker(self, deployment: Deployment) -> CircuitBreaker:
        """The breaker of an upstream deployment (shared by every catalog model that uses it)."""
        key = _key(deployment)
        if key in self._pinned:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = self._breakers[key] = self._new_breaker(key)
            return breaker
        passthrough = self._passthrough
        breaker = passthrough.get(key)
        if breaker is None:
            breaker = passthrough[key] = self._new_breaker(key)
            if len(passthrough) > self._max_passthrough:
                passthrough.popitem(last=False)
        else:
            passthrough.move_to_end(key)
        return breaker

    def _new_breaker(self, key: tuple[str, str]) -> CircuitBreaker:
        return CircuitBreaker(f"{key[0]}/{key[1]}", self.breaker_policy, self.clock, self._breaker_changed)

    def watch_breakers(self, watcher: Callable[[CircuitBreaker], None]) -> None:
        """Call `watcher` with a breaker each time its state changes (the per-model health listens)."""
        self._breaker_watchers.append(watcher)

    def _breaker_changed(self, breaker: CircuitBreaker) -> None:
        for watcher in self._breaker_watchers:
            try:
                watcher(breaker)
            except Exception as exc:  # it runs inside a call's attempt: a watcher's bug must not fail the call
                log.exception("breaker watcher %r failed on %s", watcher, breaker.name, exc_info=exc)

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker kept now (one per deployment that was called), for the metrics."""
        return [*self._breakers.values(), *self._passthrough.values()]

    def budgets(self) -> list[tuple[str, RetryBudget]]:
        """Every provider's retry budget made so far, for the metrics."""
        return list(self._budgets.items())

    def budget(self, provider: str) -> RetryBudget:
        budget = self._budgets.get(provider)
        if budget is None:
            budget = RetryBudget(self.retry.budget_ratio, self.retry.budget_reserve)
            self._budgets[provider] = budget
        return budget


def _timeouts(provider: ProviderConfig) -> StreamTimeouts:
    return StreamTimeouts(provider.first_token_timeout_s, provider.stream_idle_timeout_s)


class Attempt:
    """One upstream call of a client call. `with attempt:` releases its limit slot, and its breaker
    admission when no verdict was given (a cancelled call says nothing about the upstream)."""

    __slots__ = (
        *("_admission", "_breaker", "_limits", "_verdict", "deployment", "model", "number", "provider", "served"),
        *("observer", "outcome"),
    )

    def __init__(
        self,
        model: ModelConfig,
        deployment: Deployment,
        provider: Provider,
        number: int,
        breaker: CircuitBreaker,
        admission: Admission,
        limits: UpstreamLimits,
    ) -> None:
        self.model, self.deployment, self.provider, self.number = model, deployment, provider, number
        self.served = Served(model.name, provider.name, deployment.label)
        self._breaker, self._admission, self._limits = breaker, admission, limits
        self._verdict = False
        self.observer: PlanObserver = NO_OBSERVER
        self.outcome = "cancelled"  # until the call plan learns better (see routing/observer.py)

    def succeeded(self) -> None:
        self.outcome = "ok"
        self._record(True)

    def failed(self, error: UpstreamError | None = None) -> None:
        note = _failure_note(error) if error is not None else None
        if self._verdict:  # it failed after its first token: one more sample, as any call's
            self._breaker.record(Admission.ADMITTED, False, note)
        else:
            self._record(False, note)

    def _record(self, ok: bool, note: tuple[str, Mapping[str, str]] | None = None) -> None:
        if not self._verdict:
            self._verdict = True
            self._breaker.record(self._admission, ok, note)

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limits.release(self.deployment.provider)
        if not self._verdict:
            self._breaker.release(self._admission)
        self.observer.attempt_ended(self.served, self.outcome)


class CallPlan:
    """The attempts of one call (see the module docstring for the order and the rules)."""

    def __init__(
        self,
        shared: Resilience,
        catalog: Catalog,
        model: ModelConfig,
        timeout_s: float | None,
        *,
        providers: Mapping[str, Provider],
        rng: Callable[[], float] = random.random,
        needs: frozenset[str] = frozenset(),
    ) -> None:
        self._shared = shared
        self._needs = needs
        self._providers = providers
        self._catalog = catalog
        self._rng = rng  # picks deployments by weight (the shared one jitters backoff)
        self._deadline = shared.clock() + (defaults.REQUEST_TIMEOUT_S if timeout_s is None else timeout_s)
        self._chain = [model]
        self._index = 0
        self._order = failover_order(model, rng)
        self._position = 0
        self._tries = 0  # attempts on the current model
        self._skips_in_row = 0
        self.attempts = 0
        self._last_error: UpstreamError | None = None
        self._last_class = FailureClass.UNAVAILABLE
        self._stop_reason = ""  # why the last candidate was passed over
        self._skipped: set[str] = set()  # every reason a candidate was passed over
        self._refused: dict[str, str] = {}  # the limit that refused, for GatewayOverloaded
        self._excluded: dict[tuple[str, str], str] = {}
        self._not_before: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._counted: set[tuple[str, str]] = set()  # deployments whose breaker has this call's failure
        self._open: list[tuple[Deployment, CircuitBreaker]] = []  # breakers that turned this call away

    def remaining(self) -> float:
        return self._deadline - self._shared.clock()

    def upstream_request(self, request: ChatRequest, attempt: Attempt) -> ChatRequest:
        """`request` as `attempt`'s deployment receives it, bounded by what is left of the deadline."""
        return replace(
            request,
            model=attempt.deployment.upstream_model,
            max_output_tokens=attempt.model.max_tokens,
            timeout_s=max(self.remaining(), 0.001),
        )

    async def next_attempt(self) -> Attempt:
        """The next attempt, after any wait it needs; raises the give-up error when there is none."""
        while True:
            candidate = self._next_candidate()
            if candidate is None:
                raise self._give_up()
            attempt = await self._admit(*candidate)
            if attempt is not None:
                self._observe(attempt)
                return attempt

    def failed(self, attempt: Attempt, error: UpstreamError, *, mid_stream: bool = False) -> None:
        """Record `attempt`'s failure; raises `error` at once when no retry or fallback could help."""
        error.metadata.setdefault("model", attempt.served.model)
        error.metadata.setdefault("deployment", attempt.served.deployment)
        error.metadata["attempts"] = str(self.attempts)
        failure = classify(error)
        attempt.outcome = "failed_mid_stream" if mid_stream else failure.value
        if failure is FailureClass.FATAL:
            raise error
        key = _key(attempt.deployment)
        # One failure per deployment and call reaches its breaker; a timeout at the client's deadline says
        # nothing about the upstream and none.
        at_deadline = isinstance(error, UpstreamTimeout) and self.remaining() < defaults.RETRY_MIN_REMAINING_S
        if not at_deadline and key not in self._counted:
            attempt.failed(error)
            self._counted.add(key)
        self._last_error, self._last_class = error, failure
        log.debug(
            "attempt %d of %s on %s failed (%s): %s",
            attempt.number,
            log_value(self._chain[0].name),
            log_value(attempt.served.deployment),
            error.reason,
            scrub(error.message),
        )
        if mid_stream:
            self._excluded[key] = "failed_mid_stream"
            return
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        wait = self._shared.retry.wait_s(error, failures, self._shared.rng)
        if wait is None:
            self._excluded[key] = "retry_after_cap"
        else:
            self._not_before[key] = self._shared.clock() + wait

    def _next_candidate(self) -> tuple[ModelConfig, Deployment] | None:
        max_attempts = self._shared.retry.max_attempts
        while True:
            if self._tries < max_attempts and self._skips_in_row < len(self._order):
                deployment = self._order[self._position % len(self._order)]
                self._position += 1
                return self._chain[self._index], deployment
            if self._tries >= max_attempts:
                self._stop_reason = "max_attempts"
            if not self._advance():
                return None

    def _advance(self) -> bool:
        """Move on to the next model of the chain; False at its end."""
        if self._index == 0:
            seen = {self._chain[0].name}
            for name in self._chain[0].fallbacks_for(self._last_class.value):
                model = self._catalog.resolve(name)
                if model is not None and self._needs and model.lacks(self._needs) is not None:
                    continue  # it could not serve this call
                if model is not None and model.name not in seen:
                    seen.add(model.name)
                    self._chain.append(model)
        self._index += 1
        if self._index >= len(self._chain):
            return False
        self._order = failover_order(self._chain[self._index], self._rng)
        self._position = self._tries = self._skips_in_row = 0
        return True

    def _fallbacks_left(self) -> bool:
        if self._index == 0:
            return bool(self._chain[0].fallbacks_for(self._last_class.value))
        return self._index < len(self._chain) - 1

    async def _admit(self, model: ModelConfig, deployment: Deployment) -> Attempt | None:
        shared, key, provider = self._shared, _key(deployment), deployment.provider
        if self._needs and not model.serves(deployment, self._needs):
            self._skip("capability")
            return None
        if key in self._excluded:
            self._skip(self._excluded[key])
            return None
        if self.attempts:
            wait = self._not_before.get(key, 0.0) - shared.clock()
            if self.remaining() - max(wait, 0.0) < defaults.RETRY_MIN_REMAINING_S:
                self._excluded[key] = "deadline"  # never sleep past the deadline: give up with the last error
                self._skip("deadline")
                return None
            if wait > shared.retry.backoff_cap_s and self._fallbacks_left():
                self._tries = shared.retry.max_attempts  # a long Retry-After: the fallback serves sooner
                self._skip("retry_after")
                return None
            if wait > 0:
                await shared.sleep(wait)
        refusal = shared.limits.try_acquire(provider)
        if refusal is not None:
            self._refused = {"limit": refusal} if refusal == "process" else {"limit": refusal, "provider": provider}
            if refusal == "process":
                self._skip("overloaded")
                raise self._give_up()
            self._skip("overloaded")
            return None
        breaker = shared.breaker(deployment)
        admission = breaker.allow()
        if admission is Admission.DENIED:
            shared.limits.release(provider)
            self._open.append((deployment, breaker))
            self._skip("circuit_open")
            return None
        budget = shared.budget(provider)
        if not self.attempts:
            budget.earn()
        elif not budget.try_spend():
            shared.limits.release(provider)
            breaker.release(admission)
            self._skip("retry_budget")
            return None
        self.attempts += 1
        self._tries += 1
        self._skips_in_row = 0
        return Attempt(model, deployment, self._providers[provider], self.attempts, breaker, admission, shared.limits)

    def _observe(self, attempt: Attempt) -> None:
        observer = attempt.observer = self._shared.observer
        if self._tries > 1:
            observer.retried(attempt.served)
        elif self._index:
            observer.fell_back(self._chain[0], attempt.served, self._last_class.value)

    def _skip(self, reason: str) -> None:
        self._skips_in_row += 1
        self._stop_reason = reason
        self._skipped.add(reason)

    def _give_up(self) -> GatewayError:
        error = self._last_error
        model = self._chain[0].name
        if error is None:  # not one attempt was made
            if "overloaded" in self._skipped:
                where = "in this process" if self._refused["limit"] == "process" else f"to {self._refused['provider']}"
                return GatewayOverloaded(
                    f"the gateway is at its limit of upstream calls in flight {where}; retry shortly",
                    retry_after_s=self._shared.overload_retry_after_s,
                    metadata={**self._refused, "model": model},
                )
            return self._circuit_open(model)
        error.metadata["attempts"] = str(self.attempts)
        if self._stop_reason:
            error.metadata["retry_stopped_by"] = self._stop_reason
        return error

    def _circuit_open(self, model: str) -> CircuitOpen:
        """CIRCUIT_OPEN, saying what the first open breaker's last failure was and when it lets a probe by."""
        metadata = {"model": model}
        why = ""
        if self._open:
            deployment, breaker = self._open[0]
            retry_in_s = breaker.probe_in_s()
            metadata |= {"deployment": deployment.label, "retry_in_s": f"{retry_in_s:.0f}"}
            if breaker.last_failure is not None:
                message, details = breaker.last_failure
                metadata |= details
                why = f" (last failure of {deployment.label}: {message})"
            why += f"; retry in {retry_in_s:.0f} s"
        return CircuitOpen(
            f"model {model} and its fallbacks are failing: every deployment's circuit is open{why}",
            metadata=metadata,
        )


_FAILURE_DETAILS = ("cause", "upstream_address")


def _failure_note(error: UpstreamError) -> tuple[str, Mapping[str, str]]:
    """What a breaker keeps of a failure: the message, the reason, and what failed where."""
    details = {"last_error_reason": error.reason}
    details.update((key, error.metadata[key]) for key in _FAILURE_DETAILS if key in error.metadata)
    return error.message, details


def pick(model: ModelConfig, rng: Callable[[], float]) -> Deployment:
    """One deployment of `model`, chosen by weight."""
    deployments = model.all_deployments
    if len(deployments) == 1:
        return deployments[0]
    point = rng() * sum(d.weight for d in deployments)
    for deployment in deployments:
        point -= deployment.weight
        if point < 0:
            return deployment
    return next(d for d in reversed(deployments) if d.weight > 0)


def failover_order(model: ModelConfig, rng: Callable[[], float]) -> list[Deployment]:
    """The deployment picked by weight, then the others by weight (weight 0: standby, tried last)."""
    picked = pick(model, rng)
    if len(model.all_deployments) == 1:
        return [picked]
    return [picked, *sorted((d for d in model.all_deployments if d is not picked), key=lambda d: -d.weight)]


def _key(deployment: Deployment) -> tuple[str, str]:
    return (deployment.provider, deployment.upstream_model)
