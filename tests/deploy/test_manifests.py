"""Kubernetes manifests and the systemd unit reference our image and modules."""

from __future__ import annotations

import configparser
import importlib.util
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_k8s_deployments_run_ingest_and_compute_hardened() -> None:
    version = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["version"]
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc["spec"]["template"]["spec"]
            (container,) = spec["containers"]
            assert container["image"] == f"plantprint:{version}"  # this release's image
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            found[doc["metadata"]["name"]] = (doc["kind"], container)
    assert found["plantprint-ingest"][0] == "Deployment"
    assert found["plantprint-compute"][0] == "Deployment"
    assert found["plantprint-migrate"][0] == "Job"
    assert found["plantprint-ingest"][1]["args"][:1] == ["ingest"]
    assert found["plantprint-compute"][1]["args"][:1] == ["compute"]
    assert found["plantprint-compute"][1]["ports"][0]["containerPort"] == 9110
    for name in ("plantprint-ingest", "plantprint-compute"):
        module = found[name][1]["args"][0]
        assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_systemd_unit_starts_the_edge_with_hardening() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "plantprint-edge.service").read_text())
    service = unit["Service"]
    argv = service["ExecStart"].split()
    assert argv[1:3] == ["-m", "edge"] and "--config" in argv
    assert importlib.util.find_spec("edge.__main__") is not None
    for option, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                          "DynamicUser": "yes", "PrivateDevices": "yes",
                          "CapabilityBoundingSet": "", "StateDirectory": "plantprint-edge"
                          }.items():
        assert service[option] == value, option
