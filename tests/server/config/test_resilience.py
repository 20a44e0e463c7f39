"""The resilience part of the config file: retry, circuit_breaker, limits, keepalive, the providers' stream
timers and limits, and the models' fallback chains per error class and resume."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from server import defaults
from server.config import ConfigError, GatewayConfig, KeepaliveConfig, LimitsConfig, load_config
from server.convert import model_info
from server.errors import scrub
from server.resilience.breaker import BreakerPolicy
from server.resilience.retry import RetryPolicy
from server.routing.plan import Resilience, StreamTimeouts

PROVIDERS = """
providers:
  - {name: main, kind: demo}
  - {name: backup, kind: demo}
"""


def load(tmp_path: Path, text: str) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(PROVIDERS + textwrap.dedent(text))
    return load_config(path, env={})


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    return str(error.value).splitlines()


def test_the_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    config = load(tmp_path, "models: [{name: m, provider: main}]")

    assert config.retry == RetryPolicy(
        max_attempts=3,
        backoff_base_s=0.25,
        backoff_cap_s=4.0,
        retry_after_cap_s=10.0,
        budget_ratio=0.2,
        budget_reserve=10.0,
    )
    assert config.circuit_breaker == BreakerPolicy(
        enabled=True, consecutive_failures=10, failure_ratio=0.05, min_requests=50, window_s=60.0, cooldown_s=30.0
    )
    assert config.limits == LimitsConfig(max_concurrent_upstream=1024, retry_after_s=1.0)
    assert config.keepalive == KeepaliveConfig(30.0, 10.0, 5.0, None, None)
    main = config.providers[0]
    assert (main.max_concurrent_streams, main.first_token_timeout_s, main.stream_idle_timeout_s) == (0, 120.0, 60.0)
    assert (config.models[0].resume, config.models[0].fallbacks_by_class) == ("none", ())


def test_every_setting_can_be_set(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        retry: {max_attempts: 1, backoff_base_s: 0.01, backoff_cap_s: 0.02, retry_after_cap_s: 0.5,
                budget_ratio: 0.1, budget_reserve: 3}
        circuit_breaker: {enabled: false, consecutive_failures: 3, failure_ratio: 0.5, min_requests: 4,
                          window_s: 10, cooldown_s: 2}
        limits: {max_concurrent_upstream: 7, retry_after_s: 0.25}
        keepalive: {time_s: 20, timeout_s: 5, min_client_ping_interval_s: 1, max_connection_age_s: 300,
                    max_connection_age_grace_s: 60}
        models: [{name: m, provider: main}]
        """,
    )

    assert config.retry == RetryPolicy(1, 0.01, 0.02, 0.5, 0.1, 3.0)
    assert config.circuit_breaker == BreakerPolicy(False, 3, 0.5, 4, 10.0, 2.0)
    assert config.limits == LimitsConfig(7, 0.25)
    assert config.keepalive == KeepaliveConfig(20.0, 5.0, 1.0, 300.0, 60.0)
    assert isinstance(config.retry.max_attempts, int)


def test_provider_stream_timers_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers:\n"
        "  - {name: main, kind: demo, max_concurrent_streams: 8, first_token_timeout_s: 30, stream_idle_timeout_s: 5}\n"
        "  - {name: backup, kind: demo, max_connections: 16}\n"
        "models: [{name: m, provider: main}]\n"
    )
    config = load_config(path, env={})
    resilience = Resilience.from_config(config)

    assert resilience.timeouts("main") == StreamTimeouts(first_token_s=30.0, idle_s=5.0)
    assert resilience.timeouts("backup") == StreamTimeouts(
        defaults.FIRST_TOKEN_TIMEOUT_S, defaults.STREAM_IDLE_TIMEOUT_S
    )
    assert resilience.limits.provider_limits == {"main": 8, "backup": 16}  # unset: the pool size
    assert resilience.limits.process_limit == defaults.MAX_CONCURRENT_UPSTREAM


def test_fallbacks_per_error_class_and_resume(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        models:
          - name: m
            provider: main
            resume: continue
            fallbacks:
              default: [c]
              rate_limited: [a, b]
              unavailable: [b]
          - {name: a, provider: backup}
          - {name: b, provider: backup}
          - {name: c, provider: backup}
          - {name: plain, provider: main, fallbacks: [a]}
        """,
    )

    m, plain = config.models[0], config.models[4]
    assert m.resume == "continue"
    assert (m.fallbacks_for("rate_limited"), m.fallbacks_for("unavailable")) == (("a", "b"), ("b",))
    assert m.fallbacks == ("c",)
    assert m.all_fallbacks == ("c", "a", "b")
    assert (plain.fallbacks_for("rate_limited"), plain.fallbacks_for("unavailable")) == (("a",), ("a",))
    assert list(model_info(m, []).fallbacks) == ["c", "a", "b"]  # ListModels shows every chain's models


def test_every_resilience_problem_is_listed_at_once(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path,
        """
        retry: {max_attempts: 0, backoff_base_s: 2, backoff_cap_s: 1, jitter: full}
        circuit_breaker: {enabled: maybe, failure_ratio: 2, cooldown_s: -1}
        limits: {max_concurrent_upstream: 0}
        keepalive: {time_s: never}
        models:
          - name: m
            provider: main
            resume: sometimes
            fallbacks: {rate_limited: [nowhere], outage: [m]}
        """,
    ) == [
        "models[0].fallbacks.outage: unknown key (known: default, rate_limited, unavailable)",
        "models[0].resume: expected one of none, continue, got 'sometimes'",
        "retry.jitter: unknown key (known: backoff_base_s, backoff_cap_s, budget_ratio, budget_reserve, max_attempts, "
        "retry_after_cap_s)",
        "circuit_breaker.cooldown_s: must be at least 0",
        "circuit_breaker.enabled: expected true or false, got 'maybe'",
        "keepalive.time_s: expected a number, got 'never'",
        "models: fallback 'nowhere' of model 'm' is not another model",
        "retry.max_attempts: must be at least 1 (1 turns retries off)",
        "retry.backoff_cap_s: must be at least backoff_base_s",
        "circuit_breaker.failure_ratio: must be above 0 and at most 1",
        "limits.max_concurrent_upstream: must be at least 1",
    ]


DEMO_MODELS = "providers: [{name: demo, kind: demo}]\nmodels: [{name: demo, provider: demo}]\n"


def test_the_limits_backend_is_memory_or_a_redis_url_and_its_password_is_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "limits: {backend: 'redis://:s3cret-pass@10.0.0.7:6379/2', backend_unavailable: open}\n" + DEMO_MODELS
    )
    limits = load_config(path, env={}).limits
    assert (limits.backend, limits.backend_unavailable, limits.backend_timeout_s) == (
        "redis://:s3cret-pass@10.0.0.7:6379/2",
        "open",
        0.25,
    )
    assert scrub("redis://:s3cret-pass@10.0.0.7") == "redis://:[REDACTED]@10.0.0.7"


def test_every_problem_of_the_limits_backend_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "limits: {backend: 'http://:pw@x', backend_unavailable: maybe, backend_timeout_s: 0}\n" + DEMO_MODELS
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert str(error.value).splitlines() == [
        "limits.backend: expected memory or a redis://, rediss:// or unix:// URL",
        "limits.backend_unavailable: expected open or closed, got 'maybe'",
        "limits.backend_timeout_s: must be more than 0",
    ]
