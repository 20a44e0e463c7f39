"""The shadow traffic's Prometheus metrics (server/observe/shadow.py), apart from the callers' own, so that a
shadow's calls, tokens and cost never mix with what the callers were served and charged:

    gateway_shadow_calls_total{gen_ai_request_model, deployment, outcome, error_type}   ok, error, cancelled
    gateway_shadow_dropped_total{gen_ai_request_model, deployment}     sampled, but every slot was taken
    gateway_shadow_duration_seconds{gen_ai_request_model, deployment, outcome}           histogram
    gateway_shadow_time_to_first_token_seconds{gen_ai_request_model, deployment}         histogram, streams
    gateway_shadow_tokens_total{gen_ai_request_model, deployment, gen_ai_token_type}
    gateway_shadow_cost_usd_total{gen_ai_request_model, deployment}
    gateway_shadow_text_difference{gen_ai_request_model, deployment}   histogram, 0 (same words) .. 1 (none shared)

`gen_ai_request_model` is the shadowed catalog model and `deployment` the shadow's target, both from the
config, so every label value is bounded; `error_type` is the gateway's own UPPER_SNAKE reason.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from server.observe.metrics import DURATION_BUCKETS, TTFT_BUCKETS, LabelBounds
from server.observe.shadow import ShadowResult, Shadows

__all__ = ["DIFFERENCE_BUCKETS", "ShadowMetrics"]

DIFFERENCE_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
_LABELS = ("gen_ai_request_model", "deployment")


class ShadowMetrics:
    """The shadows' observer: one update per shadow call, none per token."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "gateway_shadow_calls",
            "Shadow calls ended, by outcome (ok, error, cancelled) and error type.",
            (*_LABELS, "outcome", "error_type"),
            registry=registry,
        )
        self.dropped = Counter(
            "gateway_shadow_dropped",
            "Calls sampled for a shadow while its slots were all taken.",
            _LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_shadow_duration",
            "Duration of a shadow call, to the end of its answer.",
            (*_LABELS, "outcome"),
            unit="seconds",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gateway_shadow_time_to_first_token",
            "Time from the start of a streamed shadow call to its first token.",
            _LABELS,
            unit="seconds",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "gateway_shadow_tokens",
            "Tokens the shadow calls used, by type.",
            (*_LABELS, "gen_ai_token_type"),
            registry=registry,
        )
        self.cost = Counter(
            "gateway_shadow_cost_usd",
            "What the shadow calls cost upstream, in US dollars (not in any caller's cost).",
            _LABELS,
            registry=registry,
        )
        self.difference = Histogram(
            "gateway_shadow_text_difference",
            "How far a shadow's answer differs from the caller's: 1 - Dice coefficient of their words and word pairs.",
            _LABELS,
            buckets=DIFFERENCE_BUCKETS,
            registry=registry,
        )

    def watch(self, shadows: Shadows) -> None:
        """Observe `shadows`; their drop counters are there at 0 before the first drop (rates work)."""
        shadows.observer = self
        for model, target in shadows.targets():
            self.dropped.labels(model, target)

    def shadow_dropped(self, model: str, target: str) -> None:
        self.dropped.labels(model, target).inc()

    def shadow_ended(self, result: ShadowResult) -> None:
        labels = (result.model, result.target)
        self.calls.labels(*labels, result.outcome, LabelBounds.reason(result.reason)).inc()
        self.duration.labels(*labels, result.outcome).observe(result.duration_s)
        if result.ttft_s is not None:
            self.ttft.labels(*labels).observe(result.ttft_s)
        if result.usage is not None:
            self.tokens.labels(*labels, "input").inc(result.usage.prompt_tokens)
            self.tokens.labels(*labels, "output").inc(result.usage.completion_tokens)
        if result.cost_usd is not None:
            self.cost.labels(*labels).inc(result.cost_usd)
        if result.difference is not None:
            self.difference.labels(*labels).observe(result.difference)
