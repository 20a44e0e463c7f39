"""deploy/k8s/: every manifest is valid against the Kubernetes schemas (kubernetes-validate bundles them: no
cluster, no network), and the manifests agree with each other, with the gateway's config loader and with
the gateway itself."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from kubernetes_validate import utils as kubernetes

from server.app import start_gateway
from server.config import GatewayConfig, MetricsConfig, load_config
from tests.deploy.test_dockerfile import DOCKERFILE, stages
from tests.process import health_check

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest Kubernetes these manifests are for (the preStop `sleep` action is on by default from 1.30), and
# the newest the validator knows.
VERSIONS = ("1.30.0", kubernetes.latest_version())

Manifest = dict[str, Any]


def manifests() -> list[tuple[str, Manifest]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found.append((path.name, document))
    return found


def one(kind: str, name: str = "holysheep-gateway") -> Manifest:
    (found,) = [m for _, m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def container() -> Manifest:
    (gateway,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(gateway, dict)
    return gateway


def gateway_config(tmp_path: Path, env: dict[str, str]) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"  # where the pod mounts it: /etc/gateway/gateway.yaml
    path.write_text(one("ConfigMap")["data"]["gateway.yaml"])
    return load_config(path, env=env)


def secret_env() -> dict[str, str]:
    return dict(one("Secret")["stringData"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("file", "manifest"), manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(file: str, manifest: Manifest, version: str) -> None:
    kubernetes.validate(manifest, version, strict=True)


def test_the_validation_catches_a_mistake() -> None:
    broken = copy.deepcopy(one("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes.ValidationError):
        kubernetes.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(one("Deployment"))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 35  # misspelled: strict refuses it
    with pytest.raises(kubernetes.ValidationError):
        kubernetes.validate(broken, VERSIONS[-1], strict=True)


def test_the_set_of_manifests() -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for _, m in manifests())
    assert kinds == [
        ("ConfigMap", "holysheep-gateway"),
        ("Deployment", "holysheep-gateway"),
        ("HorizontalPodAutoscaler", "holysheep-gateway"),
        ("PodDisruptionBudget", "holysheep-gateway"),
        ("Secret", "holysheep-gateway"),
        ("Service", "holysheep-gateway"),
        ("Service", "holysheep-gateway-headless"),
    ]


def test_the_configmap_is_a_config_the_gateway_accepts_with_the_secrets_variables(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, secret_env())
    assert config.listen == "0.0.0.0:50051"
    assert config.auth is not None
    assert config.keepalive.max_connection_age_s is not None
    # Every variable the config reads comes from the Secret, and the Secret holds nothing else.
    with pytest.raises(Exception, match="environment variable") as missing:
        gateway_config(tmp_path, {})
    named = {line.split("environment variable ")[1].split()[0] for line in str(missing.value).splitlines()}
    assert named == set(secret_env())


def test_the_grace_period_covers_the_pause_the_drain_and_the_exit(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, secret_env())
    pod = one("Deployment")["spec"]["template"]["spec"]
    pause = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The gateway exits within grace_period_s and a second (README: Keepalive, connection age and drain).
    assert pod["terminationGracePeriodSeconds"] >= pause + config.grace_period_s + 1
    # A draining pod reports NOT_SERVING: liveness must not call it dead before its drain is over.
    liveness = container()["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > pause + config.grace_period_s + 1
    assert container()["readinessProbe"]["failureThreshold"] == 1  # out of rotation at the first NOT_SERVING


def test_the_probes_ports_and_user_match_the_gateway_and_the_image(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, secret_env())
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports["grpc"] == int(config.listen.rsplit(":", 1)[1])
    assert config.metrics.listen is not None
    assert ports["metrics"] == int(config.metrics.listen.rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"]["port"] == ports["grpc"]
    assert container()["args"] == ["--config", "/etc/gateway/gateway.yaml"]
    mount = container()["volumeMounts"][0]
    assert mount["mountPath"] == "/etc/gateway"
    image_user = stages(DOCKERFILE.read_text())[-1].last("USER").split(":")[0]
    assert one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(image_user)


async def test_the_probes_ask_about_services_the_gateway_reports_serving(tmp_path: Path) -> None:
    # The ConfigMap's config on a free loopback port, without its metrics listener.
    config = replace(gateway_config(tmp_path, secret_env()), listen="127.0.0.1:0", metrics=MetricsConfig())
    gateway = await start_gateway(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            for probe in ("readinessProbe", "livenessProbe"):
                service = container()[probe]["grpc"].get("service", "")
                response = await health_check(channel)(HealthCheckRequest(service=service))
                assert response.status == HealthCheckResponse.SERVING, probe
    finally:
        await gateway.stop(0)


def test_services_select_the_pods_and_one_is_headless() -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    balanced, headless = one("Service"), one("Service", "holysheep-gateway-headless")
    for service in (balanced, headless):
        assert service["spec"]["selector"].items() <= labels.items()
        assert [(p["port"], p["targetPort"], p["appProtocol"]) for p in service["spec"]["ports"]] == [
            (50051, "grpc", "kubernetes.io/h2c")
        ]
    assert headless["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in balanced["spec"]
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "holysheep-gateway")
    assert one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2  # the PDB lets one go
