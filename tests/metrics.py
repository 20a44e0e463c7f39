"""Scrape a gateway's `/metrics` and read values out of it.

scrape = await Scrape.of(gateway)
assert scrape.value("gateway_calls_total", grpc_method="Generate", code="OK") == 1
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server.app import Gateway

__all__ = ["Scrape", "scrape_port", "wait_for_scrape"]

# How long wait_for_scrape waits for a sample, and how often it scrapes meanwhile.
WAIT_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.01


@dataclass(frozen=True)
class Scrape:
    """One scrape: its text and its samples."""

    text: str
    samples: tuple[Sample, ...]

    @classmethod
    async def of(cls, gateway: Gateway) -> Scrape:
        assert gateway.metrics_server is not None, "the gateway runs without metrics.listen"
        return await scrape_port(gateway.metrics_server.port)

    def matching(self, name: str, **labels: str) -> Iterator[Sample]:
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                yield sample

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 when there is none)."""
        return sum(sample.value for sample in self.matching(name, **labels))

    def label_values(self, name: str, label: str) -> set[str]:
        return {sample.labels[label] for sample in self.matching(name) if label in sample.labels}

    @property
    def names(self) -> set[str]:
        return {sample.name for sample in self.samples}


async def scrape_port(port: int, host: str = "127.0.0.1") -> Scrape:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}:{port}/metrics")
    response.raise_for_status()
    text = response.text
    samples = tuple(sample for family in text_string_to_metric_families(text) for sample in family.samples)
    return Scrape(text, samples)


async def wait_for_scrape(gateway: Gateway, name: str, **labels: str) -> Scrape:
    """The first scrape with a sample `name` with `labels`: for what the server records after the client
    has its answer (a cancelled call ends on the server a moment later). Fails after WAIT_TIMEOUT_S."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while True:
        scrape = await Scrape.of(gateway)
        if any(scrape.matching(name, **labels)):
            return scrape
        assert time.monotonic() < deadline, f"no {name}{labels} on /metrics after {WAIT_TIMEOUT_S} s"
        await asyncio.sleep(_POLL_INTERVAL_S)
