"""deploy/envoy/envoy.yaml's structure (Envoy is not installable here): HTTP/2 both ways, no timeout that cuts a
long stream, no retry of a stream, retries of other calls only when nothing reached an instance, and gRPC
health checks of a service the gateway reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from generated import ai_service_pb2
from server import defaults
from server.app import SERVICE_NAME

ENVOY = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"
# Retry conditions that can repeat a call an instance has started (and so, maybe, paid an upstream for).
UNSAFE_RETRIES = {"5xx", "gateway-error", "reset", "retriable-4xx", "unavailable", "cancelled",
                  "resource-exhausted", "internal", "deadline-exceeded", "retriable-status-codes"}  # fmt: skip

Config = dict[str, Any]


@pytest.fixture(scope="module")
def envoy() -> Config:
    config = yaml.safe_load(ENVOY.read_text())
    assert isinstance(config, dict)
    return config


def manager(envoy: Config) -> Config:
    (listener,) = envoy["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    return dict(hcm["typed_config"])


def routes(envoy: Config) -> list[Config]:
    (host,) = manager(envoy)["route_config"]["virtual_hosts"]
    return list(host["routes"])


def cluster(envoy: Config) -> Config:
    (gateways,) = envoy["static_resources"]["clusters"]
    return dict(gateways)


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def streaming_paths() -> list[str]:
    service = ai_service_pb2.DESCRIPTOR.services_by_name["AIService"]
    return [f"/{service.full_name}/{m.name}" for m in service.methods if m.server_streaming or m.client_streaming]


def test_clients_and_instances_speak_http2(envoy: Config) -> None:
    assert manager(envoy)["codec_type"] == "HTTP2"
    options = cluster(envoy)["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    endpoint = cluster(envoy)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 50051


def test_every_streaming_method_has_its_own_route_without_retries(envoy: Config) -> None:
    by_path = {route["match"].get("path"): route["route"] for route in routes(envoy)}
    assert streaming_paths() == ["/holysheepai.AIService/StreamGenerate", "/holysheepai.AIService/InteractiveStream"]
    for path in streaming_paths():
        assert path in by_path, path
        assert "retry_policy" not in by_path[path], path


def test_other_calls_are_retried_only_when_they_never_reached_an_instance(envoy: Config) -> None:
    (fallback,) = [route["route"] for route in routes(envoy) if route["match"].get("prefix") == "/"]
    conditions = set(fallback["retry_policy"]["retry_on"].split(","))
    assert conditions == {"connect-failure", "refused-stream", "reset-before-request"}
    assert not conditions & UNSAFE_RETRIES
    assert routes(envoy)[-1]["match"] == {"prefix": "/", "grpc": {}}  # the catch-all comes last


def test_no_envoy_timeout_cuts_a_long_stream(envoy: Config) -> None:
    for route in routes(envoy):
        assert seconds(route["route"]["timeout"]) == 0  # Envoy's default route timeout is 15 s
        assert seconds(route["route"]["max_stream_duration"]["max_stream_duration"]) == 0
    assert "max_stream_duration" not in manager(envoy)["common_http_protocol_options"]
    # Silence longer than any of the gateway's own stream timers (it reports those with a status).
    longest_gateway_wait = max(defaults.FIRST_TOKEN_TIMEOUT_S, defaults.STREAM_IDLE_TIMEOUT_S)
    assert seconds(manager(envoy)["stream_idle_timeout"]) > longest_gateway_wait
    for route in routes(envoy):
        assert seconds(route["route"].get("idle_timeout", manager(envoy)["stream_idle_timeout"])) > longest_gateway_wait


def test_health_checks_ask_the_gateways_health_service_and_pings_are_ones_it_accepts(envoy: Config) -> None:
    (check,) = cluster(envoy)["health_checks"]
    assert check["grpc_health_check"]["service_name"] == SERVICE_NAME
    assert check["unhealthy_threshold"] == 1  # a draining instance (NOT_SERVING) leaves at once
    options = cluster(envoy)["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    keepalive = options["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    assert seconds(keepalive["interval"]) >= defaults.KEEPALIVE_MIN_CLIENT_PING_INTERVAL_S
