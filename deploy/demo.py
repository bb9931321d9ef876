"""``make demo``: the simulated plant, end to end, through everything that exists.

    python -m deploy.demo [--scenario NAME|PATH] [--edge-config PATH] [--speed 100]
                          [--duration-s S]

1. starts the local services (Kafka protocol broker, PostgreSQL),
2. creates the ``plantprint_demo`` database and applies the migrations,
3. runs the simulator (free ports, ground truth to ``.state/demo/``),
4. runs an edge agent configured from ``deploy/edge/<scenario>.toml`` against
   the simulator's actual ports, the ingest consumer and the compute worker
   (site model ``deploy/sites/<scenario>.toml``),
5. when the simulated run ends, drains the agent, waits for ingest to land
   every frame and for compute to finalise every batch, prints each batch's
   footprint beside the ground truth with the error, and writes
   ``demo-out/footprints.json`` (read back from the database) and
   ``demo-out/ground_truth.json``.

A scenario is a shipped name (small, plant, faults, stress) or a scenario file
elsewhere; one that ``extends`` a shipped scenario uses that scenario's edge
config and site model unless ``--edge-config`` says otherwise.

Every process is stopped at the end, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from rich.console import Console

from deploy import devstack
from deploy.demo_certify import certify
from deploy.demo_footprints import report_footprints, wait_for_finals
from deploy.demo_report import print_report
from deploy.demo_scenario import DemoScenario, resolve
from deploy.procs import Endpoint, ServiceError, free_port, state_dir, wait_until

ROOT = Path(__file__).resolve().parent.parent
# wide enough for the report's tables when the output is a log rather than a terminal
console = Console(width=None if sys.stdout.isatty() else 140)


def demo_dir() -> Path:
    return state_dir() / "demo"


def create_database(admin_dsn: str, name: str = "plantprint_demo") -> str:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return devstack.with_dbname(admin_dsn, name)


def run_checked(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


class Processes:
    """The demo's child processes, each logging to .state/demo/<name>.log."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (demo_dir() / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() not in (None, 0):
                tail = (demo_dir() / f"{name}.log").read_text(errors="replace")[-3000:]
                raise ServiceError(f"demo: {name} exited with {proc.returncode}:\n{tail}")

    def alive(self) -> bool:
        self.check_alive()
        return True

    def stop(self, name: str, timeout: float = 30.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=10)


@contextmanager
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


HOLD_S = 10.0  # real seconds the plant waits at t = 0 for the agent to connect

PROFILE_OF_FAMILY = {"sdm630": "sdm630", "pm5000": "pm5000", "em24": "em24",
                     "carbon": "carbon", "flow": "flow-gas"}


def edge_config(sample_path: Path, endpoints: dict[str, Any], kafka: str, prefix: str) -> Path:
    """The sample agent config for the scenario, pointed at this run's ports and broker."""
    sample = tomllib.loads(sample_path.read_text())
    where = {ep["meter"]: ep for ep in endpoints["modbus"]}
    for device in sample.get("modbus", []):
        ep = where.get(device["meter"])
        if ep is None:
            raise ServiceError(f"demo: {sample_path} polls meter {device['meter']}, which the "
                               "scenario does not have")
        device["host"], device["port"], device["unit_id"] = ep["host"], ep["port"], ep["unit"]
        device["poll_interval_s"] = 0.5
    for server in sample.get("opcua", []):
        server["endpoint"] = endpoints["opcua"]["url"]
        # the PLC counters at the Modbus meters' cadence (50 simulated s at 100x): one
        # per publishing interval, the latest sample of each counter
        server["publishing_interval_s"] = 0.5
    sample["signing_key"] = str(demo_dir() / "gateway.pem")
    sample["profile_dirs"] = [str(sample_path.parent / d) for d in sample.get("profile_dirs", [])]
    sample["outputs"] = {"kafka": {"bootstrap_servers": [kafka], "topic_prefix": prefix}}
    sample["spool"] = {**sample.get("spool", {}), "path": str(demo_dir() / "spool.db")}
    sample["metrics"] = {"port": free_port()}
    if endpoints.get("clock"):
        # the plant runs faster than real time: stamp gateway time in the simulator's time
        # base, so readings without a device clock line up with device clocks and OPC UA
        sample["clock"] = {**sample.get("clock", {}), "mode": "scaled", **endpoints["clock"]}
    path = demo_dir() / "edge.toml"
    path.write_text(tomli_w.dumps(sample))
    return path


def server_config(dsn: str, kafka: str, prefix: str, gateway: str, public_key: str,
                  site: str, site_model: Path | None) -> Path:
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": [kafka], "topic_prefix": prefix,
                  # a group per run (its topic prefix): demos sharing one broker never
                  # share a group whose other members subscribe to other runs' topics
                  "group": f"{prefix}ingest", "session_timeout_s": 6.0},
        "database": {"dsn": dsn},
        "metrics": {"port": 0},
        # ingest's binding: the demo's one gateway reports every meter and asset of its site
        "gateways": {gateway: {"public_key": public_key, "site": site, "meters": ["*"],
                               "assets": ["*"]}},
        # readings every 0.5 s real = 50 simulated s at 100x: a gap is several missed polls
        "compute": {"group": f"{prefix}compute", "metrics_port": 0,
                    "sites": {site: str(site_model)} if site_model else {}},
        # PACT names the data owner on every footprint; the simulated plant's is a
        # placeholder that says what it is
        "pact": {"company_name": f"plantprint demo ({site}, simulated plant)",
                 "company_ids": [f"urn:plantprint:demo:company:{site}"]},
    }
    path = demo_dir() / "server.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def reading_count(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM reading").fetchone()
    return int(row[0]) if row else 0


def wait_for_landing(dsn: str, procs: Processes, quiet_s: float = 5.0,
                     timeout_s: float = 120.0) -> int:
    """Wait until the reading count stops growing for ``quiet_s``."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive()
        count = reading_count(dsn)
        if count != last:
            last, since = count, time.monotonic()
        elif count > 0 and time.monotonic() - since >= quiet_s:
            return count
        time.sleep(0.5)
    raise ServiceError(f"demo: ingest did not settle within {timeout_s:.0f} s ({last} readings)")


@contextmanager
def demo_services(keep: bool) -> Iterator[dict[str, Endpoint]]:
    """Kafka and PostgreSQL for the demo; those it had to start are stopped after it."""
    names = ["kafka", "postgres"]
    before = {n for n, ep in devstack.load_state().items() if devstack.reachable(ep)}
    try:
        with console.status("starting local services (Kafka protocol broker, PostgreSQL)"):
            yield devstack.up(names)
    finally:
        started = [n for n in names if n not in before]
        if started and not keep:
            devstack.down(started)
            console.print(f"[dim]stopped {', '.join(started)} (started for the demo; "
                          "--keep-services leaves them up)[/]")


def run_demo(scenario: DemoScenario, speed: float, duration_s: int, keep_services: bool,
             out: Path, database: str) -> int:
    shutil.rmtree(demo_dir(), ignore_errors=True)
    demo_dir().mkdir(parents=True)
    with demo_services(keep_services) as state:
        return run_pipeline(state, scenario, speed, duration_s, out, database)


def run_pipeline(
    state: dict[str, Endpoint], scenario: DemoScenario, speed: float, duration_s: int,
    out: Path, database: str = "plantprint_demo",
) -> int:
    py = sys.executable
    kafka, prefix = state["kafka"].url, f"demo{int(time.time())}."
    dsn = create_database(state["postgres"].url, database)
    run_checked([py, "-m", "ingest", "migrate", "--dsn", dsn], "ingest migrate")
    console.print(f"[bold]database[/] {database} migrated; Kafka at {kafka}")

    truth, endpoints_file = demo_dir() / "ground-truth.jsonl", demo_dir() / "endpoints.json"
    with processes() as procs:
        procs.start("simulator", [
            py, "-m", "simulators", "--scenario", str(scenario.path),
            "--speed", f"{speed:g}", "--duration-s", str(duration_s), "--seed", "1",
            "--ground-truth", str(truth), "--endpoints", str(endpoints_file),
            "--port-base", "0", "--opcua-port", "0",
            # the agent polls from simulated t = 0: no batch starts before it is up
            "--hold-s", f"{HOLD_S:g}",
        ])
        wait_until(lambda: procs.alive() and endpoints_file.exists(), 60,
                   "demo: simulator endpoints")
        endpoints = orjson.loads(endpoints_file.read_bytes())
        config = edge_config(scenario.edge_config, endpoints, kafka, prefix)
        gateway, public_key = run_checked(
            [py, "-m", "edge", "--config", str(config), "--init-key"], "edge --init-key"
        ).split()
        procs.start("edge", [py, "-m", "edge", "--config", str(config)])
        server = server_config(dsn, kafka, prefix, gateway, public_key, endpoints["site"],
                               scenario.site_model)
        procs.start("ingest", [py, "-m", "ingest", "--config", str(server)])
        if scenario.site_model is not None:
            procs.start("compute", [py, "-m", "compute", "--config", str(server)])
        sim = procs.procs["simulator"]
        real_s = duration_s / speed
        console.print(f"[bold]simulator[/] {scenario.name}: {duration_s:.0f} simulated s at "
                      f"{speed:g}x ≈ {real_s:.0f} s; logs in .state/demo/")
        with console.status("plant running") as status:
            while sim.poll() is None:
                procs.check_alive()
                status.update(f"plant running: {reading_count(dsn):,} readings landed")
                time.sleep(1.0)
        procs.check_alive()
        procs.stop("edge")  # SIGTERM: the agent spools what it read and drains
        with console.status("draining the gateway spool and landing the last frames"):
            landed = wait_for_landing(dsn, procs)
        procs.stop("ingest")
        if scenario.site_model is not None:
            with console.status("compute finalising the batches"):
                wait_for_finals(dsn, truth, procs.check_alive)
            procs.stop("compute")
    console.print(f"[bold]landed[/] {landed:,} readings")
    print_report(console, dsn, truth)
    if scenario.site_model is None:
        console.print(f"[yellow]no site model for {scenario.name}: no footprints computed[/]")
        return 0
    report_footprints(console, dsn, truth, out)
    with console.status("certifying: PACT export, evidence bundles verified, certificates"):
        certify(console, server, dsn, scenario.site_model, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.demo")
    ap.add_argument("--scenario", default="small", help="shipped name or scenario file")
    ap.add_argument("--edge-config", help="edge agent config (default: the scenario's)")
    ap.add_argument("--database", default="plantprint_demo",
                    help="database to (re)create on the local PostgreSQL")
    ap.add_argument("--out", type=Path, default=ROOT / "demo-out",
                    help="where footprints.json and ground_truth.json go")
    ap.add_argument("--speed", type=float, default=100.0)
    ap.add_argument("--duration-s", type=int, default=None,
                    help="simulated seconds (default: until every planned batch has ended)")
    ap.add_argument("--keep-services", action="store_true",
                    help="leave services the demo started running (inspect plantprint_demo)")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        scenario = resolve(args.scenario, args.edge_config)
        duration = args.duration_s or scenario.default_duration_s
        return run_demo(scenario, args.speed, duration, args.keep_services, args.out,
                        args.database)
    except ServiceError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
