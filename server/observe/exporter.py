"""The `/metrics` HTTP listener: prometheus-client's own server, in a thread beside the gRPC server.

A scrape renders the registry in that thread, so it never holds up the event loop that serves calls.
With several workers, the supervisor serves the sum of the workers' multiprocess files instead
(`start_shared_metrics_server`).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["MetricsServer", "start_metrics_server", "start_shared_metrics_server"]


@dataclass(slots=True)
class MetricsServer:
    """A started metrics listener and its bound port."""

    httpd: WSGIServer
    thread: threading.Thread
    port: int

    async def close(self) -> None:
        """Stop serving and close the socket (shutdown waits for the serving loop's next poll)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` on http://host:port/metrics; raises OSError when the address cannot be bound."""
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread, httpd.server_port)


def start_shared_metrics_server(host: str, port: int, directory: Path) -> MetricsServer:
    """Serve the sum of the multiprocess files in `directory` (every worker's) on http://host:port/metrics."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return start_metrics_server(host, port, registry)
