"""``python -m ingest`` started before its broker: it says which broker it waits for,
keeps retrying (capped backoff) instead of exiting, and consumes once the broker is up;
SIGTERM while waiting ends it cleanly."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from ingest_helpers import Gateway, send_all, wait_for
from kafka import KafkaProducer

from deploy.tansu import TansuBroker
from ingest.migrate import migrate
from tests.logcheck import our_tracebacks

pytestmark = pytest.mark.services
WAITING = "Kafka is not reachable at bootstrap servers {}"


def _absent_broker(broker_factory: Callable[[], TansuBroker]) -> TansuBroker:
    """A private broker whose port nothing listens on yet (``start()`` brings it up there)."""
    broker = broker_factory()
    broker.stop()
    return broker


def test_ingest_waits_for_a_late_broker_then_consumes(
    new_database, make_config, broker_factory, ingest_process, topic_prefix
) -> None:
    broker = _absent_broker(broker_factory)
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-late", meters=3)
    cfg = make_config(dsn, [g], kafka={"bootstrap_servers": [broker.bootstrap],
                                       "connect_timeout_s": 1.0, "reconnect_max_s": 1.0})
    proc = ingest_process("--config", str(cfg))
    proc.start()
    expected = WAITING.format(broker.bootstrap)
    wait_for(lambda: proc.log.read_text().count(expected) >= 2, 20, "two logged retries")
    assert proc.alive(), proc.log.read_text()[-2000:]

    broker.start()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2)
    try:
        send_all(producer, f"{topic_prefix}readings", [g.frame_bytes(seq=s) for s in range(20)])
    finally:
        producer.close(timeout=5)

    def landed() -> bool:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT count(*), count(DISTINCT seq) FROM reading").fetchone()
        return rows == (60, 20)

    wait_for(landed, 60, "every frame sent after the broker came up")
    log = proc.log.read_text()
    assert proc.alive() and our_tracebacks(log) == []
    assert f"from {broker.bootstrap}" in log  # "consuming [...] as group ... from <bootstrap>"
    assert proc.stop() == 0


def test_sigterm_while_waiting_for_the_broker_exits_cleanly(
    new_database, make_config, broker_factory, ingest_process
) -> None:
    broker = _absent_broker(broker_factory)
    dsn = new_database()
    migrate(dsn)
    cfg = make_config(dsn, [Gateway("gw-never")],
                      kafka={"bootstrap_servers": [broker.bootstrap], "connect_timeout_s": 1.0})
    proc = ingest_process("--config", str(cfg))
    proc.start()
    wait_for(lambda: WAITING.format(broker.bootstrap) in proc.log.read_text(), 20, "retry logged")
    assert proc.stop() == 0
    log = proc.log.read_text()
    assert "stopped before Kafka at" in log and our_tracebacks(log) == []
