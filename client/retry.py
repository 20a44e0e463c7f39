"""Client retries, the AIP-194 way, and never hedged: a generation costs money, so a call is repeated only
when the server says nothing was generated for it.

    call            status                          retried by                   wait
    Generate        UNAVAILABLE                     the channel's retryPolicy    exponential backoff with jitter
    Generate        RESOURCE_EXHAUSTED + RetryInfo  the client                   the server's RetryInfo delay
    StreamGenerate  UNAVAILABLE, before any chunk   the client                   RetryInfo if given, else backoff
    StreamGenerate  RESOURCE_EXHAUSTED + RetryInfo, the client                   the server's RetryInfo delay
                    before any chunk

Nothing is retried that the gateway has already retried: an error whose ErrorInfo says `client_retry: "no"`
(every upstream failure, after the gateway's own attempts and fallbacks, and CIRCUIT_OPEN) is raised at
once; the gateway also sends `grpc-retry-pushback-ms: -1` with it, which stops the channel's retryPolicy.
So one call costs the upstream at most the gateway's attempts, whatever the client's policy.

RESOURCE_EXHAUSTED is retried only when the server says when (RetryInfo), and only when that delay is at
most `max_retry_delay_s` (a rate limit for a minute is better reported than waited for). No wait ever
goes past the call's deadline, and a stream is never retried once a chunk arrived: the caller has seen it.
At most `max_attempts` attempts in all (the channel's retries of Generate count separately, up to the
same number). `retry=None` on a client turns all of this off.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from client import defaults
from client.errors import GatewayError

__all__ = ["Retrier", "RetryPolicy", "channel_options"]

SERVICE = "holysheepai.AIService"
# The ErrorInfo metadata by which the gateway says that it has already retried a call.
NO_CLIENT_RETRY = ("client_retry", "no")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = defaults.RETRY_MAX_ATTEMPTS
    initial_backoff_s: float = defaults.RETRY_INITIAL_BACKOFF_S
    max_backoff_s: float = defaults.RETRY_MAX_BACKOFF_S
    backoff_multiplier: float = defaults.RETRY_BACKOFF_MULTIPLIER
    max_retry_delay_s: float = defaults.RETRY_MAX_DELAY_S

    def service_config(self) -> str:
        """The channel's service config: Generate retries UNAVAILABLE (gRPC caps maxAttempts at 5)."""
        retry_policy = {
            "maxAttempts": min(max(self.max_attempts, 2), 5),
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        method = {"name": [{"service": SERVICE, "method": "Generate"}], "retryPolicy": retry_policy}
        return json.dumps({"methodConfig": [method]})


def channel_options(options: Sequence[tuple[str, Any]], policy: RetryPolicy | None) -> tuple[tuple[str, Any], ...]:
    """`options` with the retry policy added, unless retries are off or the caller brought a service config."""
    if policy is None or policy.max_attempts < 2 or any(key == "grpc.service_config" for key, _ in options):
        return tuple(options)
    return (*options, ("grpc.enable_retries", 1), ("grpc.service_config", policy.service_config()))


class Retrier:
    """The retry state of one call: the attempts made so far and the deadline they share."""

    def __init__(
        self,
        policy: RetryPolicy | None,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._policy = policy
        self._clock, self._rng = clock, rng
        self._deadline = clock() + timeout
        self.attempts = 1

    def remaining(self) -> float:
        return max(self._deadline - self._clock(), 0.0)

    def delay(self, error: GatewayError, *, unavailable: bool) -> float | None:
        """Seconds to wait before the next attempt after `error`; None to give up. `unavailable` says
        whether this retrier handles UNAVAILABLE (streams) or leaves it to the channel (Generate)."""
        policy = self._policy
        if policy is None or self.attempts >= policy.max_attempts or _retried_by_gateway(error):
            return None
        if error.code == grpc.StatusCode.UNAVAILABLE and unavailable:
            wait = error.retry_after if error.retry_after is not None else self._backoff(policy)
        elif error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after is not None:
            if error.retry_after > policy.max_retry_delay_s:
                return None
            wait = error.retry_after
        else:
            return None
        if wait >= self.remaining():
            return None  # never sleep past the deadline: the caller gets the server's error instead
        self.attempts += 1
        return wait

    def _backoff(self, policy: RetryPolicy) -> float:
        ceiling = policy.initial_backoff_s * policy.backoff_multiplier ** (self.attempts - 1)
        return self._rng() * min(ceiling, policy.max_backoff_s)


def _retried_by_gateway(error: GatewayError) -> bool:
    key, value = NO_CLIENT_RETRY
    return error.metadata.get(key) == value
