"""Scrape a gateway's `/metrics` and read values out of it.

scrape = await Scrape.of(gateway)
assert scrape.value("gateway_calls_total", grpc_method="Generate", code="OK") == 1
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server.app import Gateway

__all__ = ["Scrape", "scrape_port"]


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
