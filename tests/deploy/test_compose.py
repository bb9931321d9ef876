"""The compose stack: a valid compose file, a Dockerfile whose every COPY source and
CMD module exists, configs that our own loaders accept.

`docker compose config` runs where the compose plugin is installed; elsewhere (this
machine has the docker client without compose and no daemon) the file is checked
against the compose-spec JSON schema vendored in deploy/compose/. The image build
itself needs a Docker daemon: without one it is not attempted and the static checks
below stand in for it (every COPY source exists, every module a service runs exists).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from edge.config import load_config as load_edge_config
from ingest.config import load_config as load_server_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV = {"PLANTPRINT_POSTGRES_PASSWORD": "p", "PLANTPRINT_OWNER_PASSWORD": "o",
       "PLANTPRINT_INGEST_PASSWORD": "i", "PLANTPRINT_GRAFANA_PASSWORD": "g",
       "PLANTPRINT_GRAFANA_ADMIN_PASSWORD": "a"}
PUBLIC_KEY = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik="


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _docker(*args: str) -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker or "docker", *args],
                                           capture_output=True).returncode == 0


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    schema = json.loads((DEPLOY / "compose" / "compose-spec.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose())  # raises naming what is wrong


@pytest.mark.skipif(not _docker("compose", "version"),
                    reason="no docker compose plugin here: the schema check above stands in")
def test_docker_compose_config_accepts_it() -> None:
    proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr


def test_compose_has_the_stack_with_health_checks() -> None:
    services = compose()["services"]
    assert {"kafka", "timescaledb", "grafana", "mosquitto", "simulator", "edge", "bridge",
            "ingest", "compute", "migrate", "prometheus"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name, svc in services.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name} has no health check"
    for scalable in ("ingest", "compute"):  # --scale needs no fixed name or host port
        assert "container_name" not in services[scalable] and "ports" not in services[scalable]
    modules = {svc["command"][0] for svc in services.values()
               if svc.get("image", "").startswith("plantprint:") and "command" in svc
               and isinstance(svc["command"], list) and not svc.get("entrypoint")}
    assert modules == {"simulators", "edge", "ingest", "compute"}
    for module in modules:
        assert importlib.util.find_spec(f"{module}.__main__") is not None
    for svc in services.values():  # bind-mounted files exist
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), src


def test_dockerfile_copies_what_exists_and_runs_our_modules() -> None:
    lines = [ln.split() for ln in (DEPLOY / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    copies = [ln[1:-1] for ln in lines if ln[0] == "COPY" and not ln[1].startswith("--from")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the build context"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".state", "tests"} <= set(ignored)
    (cmd,) = [ln for ln in lines if ln[0] == "CMD"]
    module = json.loads(" ".join(cmd[1:]))[0]
    assert importlib.util.find_spec(f"{module}.__main__") is not None
    for script in ("edge-init.sh", "db-init/10-plantprint.sh"):
        assert (DEPLOY / "compose" / script).read_text().startswith("#!/bin/sh")


@pytest.mark.skipif(not _docker("info"),
                    reason="no Docker daemon here: the static COPY/CMD checks stand in")
def test_dockerfile_builds() -> None:
    proc = subprocess.run(["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t",
                           "plantprint:test", str(ROOT)], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_compose_configs_load_with_our_loaders(tmp_path) -> None:
    # the layout inside the image: /app/deploy and the rendered /app/run-config/server.toml
    app = tmp_path / "app"
    (app / "run-config").mkdir(parents=True)
    (app / "deploy").symlink_to(DEPLOY)
    rendered = (DEPLOY / "compose" / "server.toml").read_text().replace(
        "@EDGE_PUBLIC_KEY@", PUBLIC_KEY)
    (app / "run-config" / "server.toml").write_text(rendered)
    cfg = load_server_config(app / "run-config" / "server.toml")
    assert cfg.kafka.bootstrap_servers == ["kafka:9092"]
    assert cfg.bridge.url == "mqtt://mosquitto:1883" and cfg.metrics.addr == "0.0.0.0"
    from compute.site import load_sites

    assert set(load_sites(cfg.compute.sites, app / "run-config")) == {"demo-site"}
    edge = load_edge_config(DEPLOY / "compose" / "edge.toml")
    assert edge.gateway in cfg.gateways and edge.site == "demo-site"
    assert {m.host for m in edge.modbus} == {"simulator"}
    from simulators.config import load_scenario

    assert load_scenario(DEPLOY / "compose" / "scenario-small.toml").endpoints.host == "0.0.0.0"


def test_secure_kafka_example_loads_in_a_gateway_config(tmp_path) -> None:
    """deploy/secure/edge-kafka.toml as a gateway's [outputs.kafka], with its CA present."""
    from tests.tls.tls_helpers import make_pki

    make_pki(tmp_path / "tls")  # writes tls/ca.pem, the file the example names
    gateway = (DEPLOY / "compose" / "edge.toml").read_text()
    gateway = gateway[:gateway.index("[outputs.kafka]")] + gateway[gateway.index("[spool]"):]
    gateway = gateway.replace('profile_dirs = ["../edge/profiles"]',
                              f'profile_dirs = ["{DEPLOY / "edge" / "profiles"}"]')
    (tmp_path / "edge.toml").write_text(
        gateway + "\n" + (DEPLOY / "secure" / "edge-kafka.toml").read_text())
    kafka = load_edge_config(tmp_path / "edge.toml").outputs.kafka
    assert kafka is not None and kafka.security_protocol == "SASL_SSL"
    assert kafka.sasl_mechanism == "SCRAM-SHA-512"
    acl = (DEPLOY / "secure" / "mosquitto.acl").read_text()
    assert "pattern write plantprint/+/%u/readings" in acl
    conf = (DEPLOY / "secure" / "mosquitto-tls.conf").read_text()
    assert "require_certificate true" in conf and "allow_anonymous false" in conf
