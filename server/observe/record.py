"""One record per call, written when the call ends: today an access log line, later metrics and traces.

The record holds what the GenAI conventions ask for (the requested and the serving model, provider,
time to first token, tokens, cost) and the outcome (the gRPC code and the ErrorInfo reason). It never
holds a secret: the client is named by its configured name, never by its token, and no message text is
kept. The per-token path only counts (`deltas` and, once, `first_token_s`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from server.types import Served, Usage

__all__ = ["CallRecord", "access_log"]

access_log = logging.getLogger("server.access")


@dataclass(slots=True)
class CallRecord:
    method: str
    client: str | None
    started: float = field(default_factory=time.perf_counter)
    model: str = ""  # as the client named it
    served: Served | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    deltas: int = 0
    first_token_s: float | None = None
    code: str = "OK"
    reason: str = ""

    def first_token(self) -> None:
        self.first_token_s = time.perf_counter() - self.started

    def finish(self) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        served = self.served
        usage = self.usage
        access_log.info(
            "%s client=%s model=%s served=%s code=%s%s duration_ms=%.1f ttft_ms=%s deltas=%d tokens=%s cost_usd=%s",
            self.method,
            self.client or "-",
            self.model or "-",
            f"{served.provider}:{served.deployment}" if served else "-",
            self.code,
            f" reason={self.reason}" if self.reason else "",
            (time.perf_counter() - self.started) * 1000,
            f"{self.first_token_s * 1000:.1f}" if self.first_token_s is not None else "-",
            self.deltas,
            f"{usage.prompt_tokens}/{usage.completion_tokens}" if usage else "-",
            f"{self.cost_usd:.6f}" if self.cost_usd is not None else "-",
        )
