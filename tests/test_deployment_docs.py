"""docs/deployment.md's manifests (docs/deploy/): they parse, their worker commands use flags
the worker really has, the Ray dashboard stays private, and no secret is written inline."""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from django.core.management.base import CommandError

from tests.conftest import ROOT

DEPLOY = ROOT / "docs" / "deploy"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|_KEY$|DATABASE_URL|BROKER_URL|BACKEND")


def manifests() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        documents += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a parsed manifest."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for node in walk(doc):
        for key in ("containers", "initContainers"):
            if isinstance(node.get(key), list):
                found += node[key]
    return found


def worker_arguments(argv: list[str]) -> list[str] | None:
    """The arguments after ``manage.py django_ray_worker``, or None for another command."""
    if "django_ray_worker" not in argv:
        return None
    return argv[argv.index("django_ray_worker") + 1 :]


def systemd_units() -> list[tuple[str, configparser.ConfigParser]]:
    units = []
    for path in sorted(DEPLOY.glob("*.service")):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(path.read_text())
        units.append((path.name, unit))
    return units


def assert_real_worker_flags(where: str, arguments: list[str]) -> None:
    from django_ray.management.commands.django_ray_worker import Command

    parser = Command().create_parser("manage.py", "django_ray_worker")
    # systemd specifiers stand for values given at start: an instance name, the host name.
    values = [re.sub(r"%[iIHn]", "01", argument) for argument in arguments]
    try:
        parser.parse_args(values)
    except (CommandError, SystemExit) as error:
        pytest.fail(f"{where}: {' '.join(arguments)} is not a valid worker command: {error}")


def test_the_manifests_are_there_and_parse() -> None:
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"RayCluster", "Deployment"} <= kinds, kinds
    for _name, doc in manifests():
        assert doc.get("apiVersion") and doc.get("metadata", {}).get("name"), doc
    units = systemd_units()
    assert units, "no systemd unit under docs/deploy/"
    for name, unit in units:
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        assert unit["Service"]["ExecStart"], name


def test_every_worker_command_uses_flags_the_worker_has() -> None:
    commands = []
    for name, doc in manifests():
        for container in containers(doc):
            argv = [*container.get("command", []), *container.get("args", [])]
            arguments = worker_arguments([str(a) for a in argv])
            if arguments is not None:
                commands.append(name)
                assert_real_worker_flags(f"{name}: {container['name']}", arguments)
    for name, unit in systemd_units():
        arguments = worker_arguments(shlex.split(unit["Service"]["ExecStart"]))
        assert arguments is not None, name
        commands.append(name)
        assert_real_worker_flags(name, arguments)
    assert "worker-deployment.yaml" in commands, commands


def test_the_worker_reaches_the_ray_cluster_of_the_manifests() -> None:
    (cluster,) = [doc for _, doc in manifests() if doc["kind"] == "RayCluster"]
    (deployment,) = [doc for _, doc in manifests() if doc["kind"] == "Deployment"]
    (worker,) = [c for c in containers(deployment) if "django_ray_worker" in c.get("command", [])]
    head_service = f"{cluster['metadata']['name']}-head-svc"  # KubeRay's name for it
    assert f"--cluster={head_service}:6379" in worker["args"], worker["args"]
    # The same image (project code, Python, Ray) on the worker and every Ray node.
    images = {c["image"] for c in containers(cluster)} | {
        c["image"] for c in containers(deployment)
    }
    assert len(images) == 1, images
    # The health probes of docs/metrics.md.
    assert "django_ray_health" in worker["livenessProbe"]["exec"]["command"]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--metrics-host=0.0.0.0" in worker["args"]  # an httpGet probe needs it


def test_the_ray_dashboard_is_not_exposed_publicly() -> None:
    for name, doc in manifests():
        kind = doc["kind"]
        assert kind != "Ingress", f"{name}: no Ingress (the dashboard has no login of its own)"
        if kind == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", name
            ports = [p.get("port") for p in doc["spec"].get("ports", [])]
            assert 8265 not in ports, f"{name}: a Service of its own for the dashboard"
        if kind == "RayCluster":
            head = doc["spec"]["headGroupSpec"]
            service_type = head.get("serviceType", "ClusterIP")
            host = head.get("rayStartParams", {}).get("dashboard-host", "127.0.0.1")
            assert service_type == "ClusterIP" or host == "127.0.0.1", name
            assert service_type not in {"LoadBalancer", "NodePort"}, name
            assert (
                "headService" not in head
                or head["headService"].get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
            ), name
    for name, unit in systemd_units():
        assert "dashboard-host=0.0.0.0" not in unit["Service"]["ExecStart"], name


def test_no_secret_is_written_inline() -> None:
    for name, doc in manifests():
        assert doc["kind"] != "Secret", f"{name}: a Secret's data belongs out of the docs"
        for container in containers(doc):
            for variable in container.get("env", []):
                value = str(variable.get("value", ""))
                # A path to a mounted Secret (RAY_TLS_SERVER_KEY=/etc/ray/tls/tls.key) is fine.
                if SECRET_NAME.search(variable["name"]) and not value.startswith("/"):
                    assert "value" not in variable, f"{name}: {variable['name']} inline"
                    assert "secretKeyRef" in variable["valueFrom"], (name, variable)
            argv = " ".join(str(a) for a in container.get("args", []))
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", argv), f"{name}: a password in a URL"
    for name, unit in systemd_units():
        service = unit["Service"]
        for line in service.get("Environment", "").splitlines():
            assert not SECRET_NAME.search(line.split("=", 1)[0]), f"{name}: {line}"
        assert service["EnvironmentFile"], name  # the secrets' file, mode 0600
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", service["ExecStart"]), name


def test_the_deployment_guide_links_the_manifests_and_is_linked() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for path in DEPLOY.iterdir():
        assert f"deploy/{path.name}" in guide, path.name
    for needed in ("django_ray_preflight", "RAY_ENV_VARS", "RAY_RUNTIME_ENV", "django_ray_health"):
        assert needed in guide, needed
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()
    assert "deployment.md" in (ROOT / "docs" / "modes.md").read_text()
