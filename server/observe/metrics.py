"""The gateway's Prometheus metrics: GenAI metrics from each call's record, attempts from the call plan,
breakers and retry budgets read when scraped. The gRPC server metrics are in grpc_metrics.py.

Every call's numbers come from its CallRecord when it ends (`ended`, called by the policy seam right
after the access log line is written), so the log and the metrics never disagree; nothing is done per
token. The GenAI metrics follow the OpenTelemetry GenAI semantic conventions as the OpenTelemetry
Prometheus exporter names them (dots become underscores, the unit `s` becomes `_seconds`):

    gen_ai_client_token_usage{..., gen_ai_token_type}        histogram, input and output tokens per call
    gen_ai_server_time_to_first_token_seconds{...}           histogram, streams only
    gen_ai_server_time_per_output_token_seconds{...}         histogram, streams with 2+ output tokens
    gen_ai_client_operation_duration_seconds{..., error_type} histogram, every call and turn

each labelled with gen_ai_operation_name ("chat"; Embed "embeddings", CountTokens "count_tokens"),
gen_ai_request_model, gen_ai_response_model, gen_ai_provider_name and deployment.
The gateway's own, all prefixed `gateway_`, are listed in README
("Metrics").

With several worker processes (server/workers.py) each worker writes its metrics to prometheus-client's
multiprocess files and the supervisor serves their sum: counters and histograms add up (a dead
worker's counts stay, so counters never go back), the in-flight and session gauges are the sum over
live workers, and the breaker and retry-budget gauges, which a supervisor cannot read out of a worker
at scrape time, are written by each worker when a call ends (`shared=True`).

Label values are bounded: models, providers and deployments are the catalog's (a name the catalog does
not know is `unknown`; a "provider/anything" pass-through is `provider/*`), clients are the configured
names (`anonymous` without auth), reasons are the error tree's UPPER_SNAKE names. Nothing a client
typed and no secret becomes a label.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.observe.grpc_metrics import GrpcServerMetrics
from server.observe.lean import LEAN, PROMETHEUS_CLIENT, MetricKinds
from server.observe.record import CallRecord, operation_of
from server.resilience.breaker import BreakerState, CircuitBreaker
from server.routing.catalog import Catalog, ModelConfig
from server.routing.plan import Resilience
from server.types import Served

__all__ = ["GatewayMetrics", "LabelBounds", "LimitsStoreMetrics"]

UNKNOWN = "unknown"
ANONYMOUS = "anonymous"  # the client of a gateway without auth
NONE = ""  # a label that does not apply (no deployment served a failed call)
SESSION = "InteractiveStream"
TURN = "InteractiveStream.turn"

GENAI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_provider_name",
    "deployment",
)
# The bucket boundaries the OpenTelemetry GenAI conventions advise.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# Distinct kinds of call (`_Series`) kept, and the longest model name one is kept for: the label values are
# bounded, the names a client asks for (and passes through to a provider) are not.
SERIES_LIMIT = 1024
SERIES_KEY_CHARS = 256
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# The client limits a call can be refused by (server/policy/store.py), and "models" (MODEL_NOT_ALLOWED).
_LIMITS = frozenset(
    {
        "requests_per_minute",
        "tokens_per_minute",
        "concurrent_streams",
        "budget_usd_per_day",
        "budget_usd_per_month",
        "models",
    }
)


class LabelBounds:
    """Turns what a record holds into label values from a fixed set: the catalog's and the config's."""

    def __init__(self, catalog: Catalog, clients: Collection[str], providers: Collection[str]) -> None:
        self._catalog = catalog
        self._names = frozenset(catalog.known_names)
        self._clients = frozenset(clients)
        self._providers = frozenset(providers)
        deployments = [d for m in catalog.models() for d in m.all_deployments]
        self._deployments = frozenset(d.label for d in deployments)
        self._upstreams = frozenset(f"{d.provider}/{d.upstream_model}" for d in deployments)

    def model(self, name: str) -> str:
        """A model name as asked (or as served): a catalog name or alias, `provider/*`, or `unknown`."""
        if name in self._names:
            return name
        if not name:
            return NONE
        resolved = self._catalog.resolve(name)
        return f"{resolved.provider}/*" if resolved is not None else UNKNOWN

    def provider(self, name: str) -> str:
        return name if name in self._providers else UNKNOWN

    def deployment(self, served: Served) -> str:
        if served.deployment in self._deployments:
            return served.deployment
        return f"{self.provider(served.provider)}/*"

    def is_upstream(self, name: str) -> bool:
        """Whether `name` ("provider/upstream_model", a breaker's) is a deployment of the catalog."""
        return name in self._upstreams

    def client(self, name: str | None) -> str:
        if name is None:
            return ANONYMOUS
        return name if name in self._clients else UNKNOWN

    @staticmethod
    def limit(limit: str) -> str:
        return limit if limit in _LIMITS else "other"

    @staticmethod
    def reason(reason: str) -> str:
        return reason if not reason or _REASON.fullmatch(reason) else "OTHER"

    def genai(self, record: CallRecord) -> tuple[str, str, str, str, str]:
        """The GenAI label values of a call or turn (the served ones empty when none served it)."""
        served = record.served
        requested = self.model(record.model)
        operation = operation_of(record.method)
        if served is None:
            return operation, requested, NONE, NONE, NONE
        return operation, requested, self.model(served.model), self.provider(served.provider), self.deployment(served)


class GatewayMetrics:
    """Every metric of one gateway, in its own registry (several gateways can run in one test process).

    It is the policy seam's record observer (`begun`, `ended`) and the call plan's observer
    (`attempt_ended`, `retried`, `fell_back`); `watch(resilience)` adds the breakers and retry budgets.
    `shared`: a worker's, written to the multiprocess files its supervisor serves.
    """

    def __init__(
        self,
        bounds: LabelBounds,
        registry: CollectorRegistry | None = None,
        *,
        shared: bool = False,
        counted_by_handler: Collection[str] = (),
    ) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.bounds = bounds
        self._watched: _ResilienceCollector | None = None
        self._series: dict[_SeriesKey, _Series] = {}
        self.shared = shared
        self._resilience_gauges: _ResilienceGauges | None = None
        # Lean metrics (plain numbers, rendered when scraped) in one process; a worker's must be
        # prometheus-client's, whose values are the multiprocess files its supervisor adds up.
        kinds = PROMETHEUS_CLIENT if shared else LEAN
        make = _Make(kinds, registry)
        self.grpc = GrpcServerMetrics(registry, kinds, counted_by_handler=counted_by_handler)
        self.token_usage = _Children(
            kinds.histogram(
                "gen_ai_client_token_usage",
                "Tokens used per call, by type (input, output).",
                (*GENAI_LABELS, "gen_ai_token_type"),
                buckets=TOKEN_BUCKETS,
                registry=registry,
            )
        )
        self.ttft = make.seconds_histogram(
            "gen_ai_server_time_to_first_token",
            "Time from the start of a stream to its first token.",
            GENAI_LABELS,
            TTFT_BUCKETS,
        )
        self.tpot = make.seconds_histogram(
            "gen_ai_server_time_per_output_token",
            "Time per output token after the first, of a stream.",
            GENAI_LABELS,
            TPOT_BUCKETS,
        )
        self.duration = make.seconds_histogram(
            "gen_ai_client_operation_duration",
            "Duration of a call or InteractiveStream turn, to its status.",
            (*GENAI_LABELS, "error_type"),
            DURATION_BUCKETS,
        )
        self.calls = make.counter(
            "gateway_calls",
            "Calls, InteractiveStream sessions and turns ended, by outcome.",
            ("grpc_method", "client", "gen_ai_request_model", "code", "reason"),
        )
        self.tokens = make.counter(
            "gateway_tokens",
            "Tokens used, by client and type.",
            ("client", *GENAI_LABELS, "gen_ai_token_type"),
        )
        self.cost = make.counter(
            "gateway_cost_usd",
            "What the calls cost upstream, in US dollars (calls with a known price).",
            ("client", *GENAI_LABELS),
        )
        self.in_flight = _Children(
            kinds.gauge(
                "gateway_calls_in_flight",
                "Calls and InteractiveStream turns running.",
                ("grpc_method",),
                registry=registry,
                multiprocess_mode="livesum",  # with workers: the sum over the live ones
            )
        )
        self.queue_wait = _Children(
            kinds.histogram(
                "gateway_queue_wait_seconds",
                "How long calls that found every slot taken waited for one (server/policy/fair_queue.py), "
                "by priority class and client, whether they got one or not.",
                ("priority", "client", "code"),
                buckets=QUEUE_WAIT_BUCKETS,
                registry=registry,
            )
        )
        self.sessions = kinds.gauge(
            "gateway_interactive_sessions",
            "InteractiveStream sessions open.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.turns = make.counter(
            "gateway_interactive_turns", "InteractiveStream turns ended, by gRPC code.", ("code",)
        )
        attempt_labels = ("gen_ai_provider_name", "deployment")
        self.attempts = make.counter(
            "gateway_upstream_attempts",
            "Upstream attempts ended, by outcome (ok, rate_limited, unavailable, fatal, failed_mid_stream, cancelled).",
            (*attempt_labels, "outcome"),
        )
        self.retries = make.counter(
            "gateway_upstream_retries",
            "Attempts that were not the first on their model.",
            attempt_labels,
        )
        self.fallbacks = make.counter(
            "gateway_fallbacks",
            "Fallbacks taken: the first attempt on a fallback model, after a failure of error_class.",
            ("from_model", "to_model", "error_class"),
        )
        self.quota_rejections = make.counter(
            "gateway_quota_rejections",
            "Calls refused by a client's limits, by client and limit (requests_per_minute, tokens_per_minute, "
            "concurrent_streams, budget_usd_per_day, budget_usd_per_month, models).",
            ("client", "limit"),
        )
        for method in ("Generate", "StreamGenerate", TURN):
            self.in_flight(method)  # present at 0 before the first call

    def watch(self, resilience: Resilience, bounds: LabelBounds | None = None) -> None:
        """Observe `resilience`'s call plans, and report its breakers and retry budgets when scraped.

        After a config reload: watch the new router's `resilience` instead, with the new config's `bounds`
        (the label values of calls that began before the reload are then mapped by the new ones)."""
        if bounds is not None:
            self.bounds = bounds
            self._series.clear()  # their label values were the old config's
        resilience.observer = self
        if self.shared:
            if self._resilience_gauges is None:
                self._resilience_gauges = _ResilienceGauges(resilience, self.bounds, self.registry)
            else:
                self._resilience_gauges.follow(resilience, self.bounds)
            return
        if self._watched is not None:
            self.registry.unregister(self._watched)
        self._watched = _ResilienceCollector(resilience, self.bounds)
        self.registry.register(self._watched)

    # --- the policy seam's record observer ------------------------------------------------------------

    def begun(self, record: CallRecord) -> None:
        if record.method == SESSION:
            self.sessions.inc()
        else:
            self.in_flight(record.method).inc()

    def ended(self, record: CallRecord) -> None:
        key = (record.method, record.client, record.model, record.code, record.reason, record.served)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key, record)
        series.calls.inc()
        if record.quota_limit:
            self.quota_rejections(series.client, self.bounds.limit(record.quota_limit)).inc()
        if record.method == SESSION:
            self.sessions.dec()
            return
        series.in_flight.dec()
        if record.queued_s is not None:
            self.queue_wait(record.priority, series.client, record.code).observe(record.queued_s)
        if series.turns is not None:
            series.turns.inc()
        duration, first = record.duration_s, record.first_token_s
        if duration is not None:
            series.duration.observe(duration)
        if first is not None:
            series.ttft().observe(first)
        usage = record.usage
        if usage is not None:
            input_usage, output_usage, input_tokens, output_tokens = series.usage()
            input_usage.observe(usage.prompt_tokens)
            output_usage.observe(usage.completion_tokens)
            input_tokens.inc(usage.prompt_tokens)
            output_tokens.inc(usage.completion_tokens)
            after_first = usage.completion_tokens - 1
            if first is not None and duration is not None and after_first > 0:
                series.tpot().observe((duration - first) / after_first)
        if record.cost_usd is not None:
            series.cost().inc(record.cost_usd)
        if self._resilience_gauges is not None:
            self._resilience_gauges.sync()

    def _new_series(self, key: _SeriesKey, record: CallRecord) -> _Series:
        series = _Series(self, record)
        served = record.served
        longest = max(len(record.model), len(served.model), len(served.deployment)) if served else len(record.model)
        if longest > SERIES_KEY_CHARS:
            return series  # a name this long is one a client made up: not worth its memory
        if len(self._series) >= SERIES_LIMIT:  # only names a client made up get this far: start over
            self._series.clear()
        self._series[key] = series
        return series

    # --- the call plan's observer ---------------------------------------------------------------------

    def attempt_ended(self, served: Served, outcome: str) -> None:
        bounds = self.bounds
        self.attempts(bounds.provider(served.provider), bounds.deployment(served), outcome).inc()

    def retried(self, served: Served) -> None:
        self.retries(self.bounds.provider(served.provider), self.bounds.deployment(served)).inc()

    def fell_back(self, origin: ModelConfig, served: Served, failure_class: str) -> None:
        bounds = self.bounds
        self.fallbacks(bounds.model(origin.name), bounds.model(served.model), failure_class).inc()


_SeriesKey: TypeAlias = tuple[str, str | None, str, str, str, Served | None]


class _Series:
    """The children that one kind of call writes to when it ends (one method, client, model asked for,
    code, reason and server), each looked up in its metric once: `ended` then costs a dict lookup and
    the observations, with no label values to work out. The ones not every such call writes (time to
    first token, usage, cost) are looked up when first written, so that no series appears before then."""

    __slots__ = (
        "_cost",
        "_labels",
        "_metrics",
        "_tpot",
        "_ttft",
        "_usage",
        "calls",
        "client",
        "duration",
        "in_flight",
        "turns",
    )

    def __init__(self, metrics: GatewayMetrics, record: CallRecord) -> None:
        bounds = metrics.bounds
        self._metrics = metrics
        self.client = client = bounds.client(record.client)
        reason = bounds.reason(record.reason)
        self.calls = metrics.calls(record.method, client, bounds.model(record.model), record.code, reason)
        self._labels = labels = bounds.genai(record)
        self.in_flight: Any = metrics.in_flight(record.method) if record.method != SESSION else None
        self.turns = metrics.turns(record.code) if record.method == TURN else None
        self.duration = metrics.duration(*labels, reason or (record.code if record.code != "OK" else ""))
        self._ttft: Any = None
        self._tpot: Any = None
        self._cost: Any = None
        self._usage: tuple[Any, Any, Any, Any] | None = None

    def ttft(self) -> Any:
        if self._ttft is None:
            self._ttft = self._metrics.ttft(*self._labels)
        return self._ttft

    def tpot(self) -> Any:
        if self._tpot is None:
            self._tpot = self._metrics.tpot(*self._labels)
        return self._tpot

    def cost(self) -> Any:
        if self._cost is None:
            self._cost = self._metrics.cost(self.client, *self._labels)
        return self._cost

    def usage(self) -> tuple[Any, Any, Any, Any]:
        """The input and output token-usage histograms, then the input and output token counters."""
        if self._usage is None:
            metrics, labels, client = self._metrics, self._labels, self.client
            self._usage = (
                metrics.token_usage(*labels, "input"),
                metrics.token_usage(*labels, "output"),
                metrics.tokens(client, *labels, "input"),
                metrics.tokens(client, *labels, "output"),
            )
        return self._usage


class _Children:
    """A metric's children by label values, each looked up once (the values are bounded, so is this)."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


@dataclass(frozen=True, slots=True)
class _Make:
    """Metrics of one kind (lean, or prometheus-client's) in one registry, each as its children by label values."""

    kinds: MetricKinds
    registry: CollectorRegistry

    def counter(self, name: str, documentation: str, labels: Sequence[str]) -> _Children:
        return _Children(self.kinds.counter(name, documentation, labels, registry=self.registry))

    def seconds_histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> _Children:
        """A histogram of seconds."""
        metric = self.kinds.histogram(
            name, documentation, labels, unit="seconds", buckets=buckets, registry=self.registry
        )
        return _Children(metric)


class LimitsStoreMetrics:
    """`gateway_limits_store_unavailable_total{outcome}`: the shared limits store's observer (an
    UnavailableObserver of server/policy/redis_store.py). A plain counter, so that with workers each one
    writes it to the multiprocess files and the supervisor serves the sum."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # prometheus-client's own: a worker writes it to the multiprocess files
        self._calls = _Make(PROMETHEUS_CLIENT, registry).counter(
            "gateway_limits_store_unavailable",
            "Calls decided without the shared limits store, which did not answer: served (fail-open) or refused.",
            ("outcome",),
        )
        for outcome in ("served", "refused"):
            self._calls(outcome)  # present at 0 before the first outage

    def limits_store_unavailable(self, outcome: Literal["served", "refused"]) -> None:
        self._calls(outcome).inc()


_BREAKER_STATE = (
    "gateway_circuit_breaker_state",
    "1 for the state each upstream deployment's circuit breaker is in (closed, half_open, open); with "
    "workers, how many are in it.",
)
_BREAKER_LABELS = ("gen_ai_provider_name", "deployment", "state")
_RETRY_BUDGET = (
    "gateway_retry_budget_balance",
    "Retries each provider's retry budget holds now; with workers, the lowest of any worker.",
)
_BUDGET_LABELS = ("gen_ai_provider_name",)


class _ResilienceCollector(Collector):
    """Breaker states and retry-budget balances, read at scrape time: nothing to keep up to date per call.

    A breaker is per upstream deployment (provider and upstream model, shared by the catalog models that
    use it), labelled `provider/upstream_model`; breakers of "provider/anything" pass-through names are
    left out, so that no client-chosen name becomes a label.
    """

    def __init__(self, resilience: Resilience, bounds: LabelBounds) -> None:
        self._resilience = resilience
        self._bounds = bounds

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states, budgets = self._families()
        for breaker in self._resilience.breakers():
            if not self._bounds.is_upstream(breaker.name):
                continue
            for state in BreakerState:
                states.add_metric(_breaker_labels(breaker, state), 1.0 if breaker.state is state else 0.0)
        for provider, budget in self._resilience.budgets():
            budgets.add_metric([self._bounds.provider(provider)], budget.balance)
        yield states
        yield budgets

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        states = GaugeMetricFamily(*_BREAKER_STATE, labels=_BREAKER_LABELS)
        budgets = GaugeMetricFamily(*_RETRY_BUDGET, labels=_BUDGET_LABELS)
        return states, budgets


class _ResilienceGauges:
    """Breaker states and retry-budget balances as a worker's gauges, written when a call ends (the
    only time they change: a breaker moves, and a budget earns or spends, within calls), and only the
    values that changed since.

    Across workers a breaker's `state` sample is the number of live workers whose breaker is in that
    state (each worker has its own breakers), and a budget is the lowest balance of any live worker.
    """

    def __init__(self, resilience: Resilience, bounds: LabelBounds, registry: CollectorRegistry) -> None:
        self._resilience = resilience
        self._bounds = bounds
        self._states = Gauge(*_BREAKER_STATE, _BREAKER_LABELS, registry=registry, multiprocess_mode="livesum")
        self._budgets = Gauge(*_RETRY_BUDGET, _BUDGET_LABELS, registry=registry, multiprocess_mode="livemin")
        self._written: dict[tuple[Gauge, tuple[str, ...]], float] = {}

    def follow(self, resilience: Resilience, bounds: LabelBounds) -> None:
        """A reloaded config's breakers and budgets, into the same gauges."""
        self._resilience, self._bounds = resilience, bounds

    def sync(self) -> None:
        for breaker in self._resilience.breakers():
            if self._bounds.is_upstream(breaker.name):
                for state in BreakerState:
                    self._write(self._states, _breaker_labels(breaker, state), float(breaker.state is state))
        for provider, budget in self._resilience.budgets():
            self._write(self._budgets, (self._bounds.provider(provider),), budget.balance)

    def _write(self, gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
        if self._written.get((gauge, labels)) != value:
            self._written[gauge, labels] = value
            gauge.labels(*labels).set(value)


def _breaker_labels(breaker: CircuitBreaker, state: BreakerState) -> tuple[str, str, str]:
    return breaker.name.partition("/")[0], breaker.name, state.value
