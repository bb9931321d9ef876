"""Shared fixtures: the real local services, fresh databases, topics, private brokers.

The session starts whatever services are not already up (``deploy/devstack.py``)
and stops, at its end, those it started itself; services brought up by
``make services-up`` are left running for the next session.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hypothesis import settings as hypothesis_settings

from deploy import devstack
from deploy.procs import ServiceError, pid_alive
from deploy.tansu import TansuBroker

ROOT = Path(__file__).resolve().parent.parent

# pytester: tests/test_leak_check.py runs a small pytest session to show the
# leak check failing a test.
pytest_plugins = ["pytester"]


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    pg_admin_dsn: str
    mqtt_host: str
    mqtt_port: int
    tsdb_dsn: str


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    before = {n for n, ep in devstack.load_state().items() if devstack.reachable(ep)}
    try:
        state = devstack.up()
    except ServiceError as exc:
        pytest.fail(f"local services could not start: {exc}", pytrace=False)
    mqtt = urlparse(state["mqtt"].url)
    yield Services(
        kafka_bootstrap=state["kafka"].url,
        pg_admin_dsn=state["postgres"].url,
        mqtt_host=mqtt.hostname or "127.0.0.1",
        mqtt_port=mqtt.port or 1883,
        tsdb_dsn=state["tsdb"].url,
    )
    started_here = [n for n in devstack.SERVICES if n not in before]
    devstack.down(started_here)


@dataclass(frozen=True)
class SmallPlant:
    """The `small` scenario run once through the whole pipeline (``deploy.demo``).

    Its database holds what ingest landed and compute stored; tests read it and
    must not change it (copy what you need to change). ``out`` holds the demo's
    footprints.json and ground_truth.json; ``truth`` is the simulator's
    ground-truth JSON Lines, for grading only.
    """

    dsn: str
    database: str
    out: Path
    truth: Path
    stdout: str


# one per test session: sessions run side by side on one server must not drop each other's
SMALL_PLANT_DB = f"pp_test_small_plant_{os.getpid()}"


@pytest.fixture(scope="session")
def small_plant(services: Services, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[SmallPlant]:
    """One demo run of `small` per session, in a state folder of its own.

    The demo keeps its logs and ground truth under the state folder; a private
    one (holding a copy of the services' endpoints) lets this run share the
    services with the rest of the session without touching ``.state/demo``.
    """
    base = tmp_path_factory.mktemp("small-plant")
    state, out = base / "state", base / "out"
    state.mkdir()
    shutil.copy(devstack.state_dir() / "services.json", state / "services.json")
    env = {**os.environ, "PLANTPRINT_DSN": services.pg_admin_dsn,
           "PLANTPRINT_STATE": str(state)}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.demo", "--scenario", "small", "--database",
         SMALL_PLANT_DB, "--out", str(out), "--keep-services"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail("the small demo failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:],
                    pytrace=False)
    try:
        yield SmallPlant(dsn=devstack.with_dbname(services.pg_admin_dsn, SMALL_PLANT_DB),
                         database=SMALL_PLANT_DB, out=out,
                         truth=state / "demo" / "ground-truth.jsonl", stdout=proc.stdout)
    finally:
        import psycopg

        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{SMALL_PLANT_DB}" WITH (FORCE)')


@pytest.fixture
def new_database(services: Services) -> Iterator[Callable[[], str]]:
    """Factory: each call creates an empty database and returns its DSN; all dropped after."""
    import psycopg

    created: list[str] = []

    def make() -> str:
        name = f"pp_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return devstack.with_dbname(services.pg_admin_dsn, name)

    yield make
    with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses (topics auto-create on the shared broker)."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def broker_factory() -> Iterator[Callable[[], TansuBroker]]:
    """Factory of private tansu brokers a test may stop and restart (memory storage)."""
    brokers: list[TansuBroker] = []

    def make() -> TansuBroker:
        broker = TansuBroker(f"kafka-test-{len(brokers)}")
        broker.start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


def _child_pids() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


@pytest.fixture(autouse=True)
def system_health() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads or child processes behind.

    Tasks left pending on a test's event loop are caught as well, by
    :func:`pytest_fixture_setup` below: pytest-asyncio gives each test its own
    loop and closes it before this fixture's teardown runs.
    """
    threads_before = set(threading.enumerate())
    children_before = _child_pids()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        threads = [
            t for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not t.daemon
        ]
        children = _child_pids() - children_before
        children = {p for p in children if pid_alive(p)}
        if not threads and not children:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    pytest.fail(
        f"test left behind threads {[t.name for t in threads]} and processes {sorted(children)}",
        pytrace=False,
    )


# ----------------------------------------------------------- leftover tasks

# A task still finishing when the test ends (a cancelled one running its
# cleanup, a close callback) gets this long, in seconds, before it counts as left.
TASK_GRACE_S = 1.0
# pytest-asyncio's fixture holding the asyncio.Runner of one test's loop.
_TEST_LOOP_RUNNER = "_function_scoped_runner"


def leftover_tasks(loop: asyncio.AbstractEventLoop, grace_s: float,
                   ) -> list[asyncio.Task[object]]:
    """Tasks of ``loop`` (not running) still pending after ``grace_s`` of running it."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if pending and grace_s > 0:
        loop.run_until_complete(asyncio.wait(pending, timeout=grace_s))
    return [t for t in pending if not t.done()]


def _describe(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", repr(coro))
    return f"{task.get_name()} ({where})"


def _check_loop_tasks(runner: asyncio.Runner, nodeid: str) -> None:
    left = leftover_tasks(runner.get_loop(), TASK_GRACE_S)
    if left:
        # the runner cancels them right after, but ending them was the test's job
        pytest.fail(f"{nodeid} left asyncio tasks pending: {[_describe(t) for t in left]}",
                    pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest,
) -> object:
    """Check a test's loop for leftover tasks before pytest-asyncio closes it.

    Finalizers run last-in first-out: this one, added once the runner exists,
    runs after every fixture built on the loop has been torn down (they
    register later) and before the runner's own teardown cancels what is left.
    """
    value = yield
    if fixturedef.argname == _TEST_LOOP_RUNNER and isinstance(value, asyncio.Runner):
        fixturedef.addfinalizer(
            functools.partial(_check_loop_tasks, value, request.node.nodeid))
    return value


# ------------------------------------------------------------------- lanes

# Fixtures that put a test on the real services. ``services`` covers every
# fixture built on it (new_database, make_config, producer, writer_login, ...),
# since an item's fixture closure is transitive; the others start or address a
# broker without it.
SERVICE_FIXTURES = frozenset({"services", "broker_factory", "topic_prefix"})
# Fixtures that run a simulated plant (in process or as a child process) for
# seconds of real time: tests/simulators' plant_factory, the edge's simulator
# and fast_simulator; small_plant runs the whole small demo once per session.
SLOW_FIXTURES = frozenset({"plant_factory", "simulator", "fast_simulator", "small_plant"})


# make test-fast runs with --hypothesis-profile=fast: every property test, but
# with at most this many examples, even one that asks for more with @settings.
FAST_PROFILE = "fast"
hypothesis_settings.register_profile(FAST_PROFILE, max_examples=20)


def _cap_examples(item: pytest.Item, cap: int) -> None:
    test = getattr(item, "obj", None)
    # where @given and @settings keep a test's settings (read at each call)
    current = getattr(test, "_hypothesis_internal_use_settings", None)
    if current is not None and current.max_examples > cap:
        test._hypothesis_internal_use_settings = hypothesis_settings(  # type: ignore[union-attr]
            current, max_examples=cap)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``services`` every test whose fixtures reach a real service and ``slow``
    every test that runs a simulated plant, so that ``-m "not services and not
    slow"`` (make test-fast) needs no service and takes seconds.

    Tests that start a broker or a protocol server of their own without these
    fixtures carry the mark themselves.
    """
    fast = config.getoption("hypothesis_profile", None) == FAST_PROFILE
    for item in items:
        closure = set(getattr(item, "fixturenames", ()))
        if closure & SERVICE_FIXTURES and item.get_closest_marker("services") is None:
            item.add_marker(pytest.mark.services)
        if closure & SLOW_FIXTURES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
        if fast:
            _cap_examples(item, hypothesis_settings.get_profile(FAST_PROFILE).max_examples)


def pytest_report_header() -> list[str]:
    return [f"plantprint services state: {os.environ.get('PLANTPRINT_STATE', '.state/')}"]
