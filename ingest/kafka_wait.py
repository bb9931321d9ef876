"""Waiting for a Kafka broker that is not reachable yet (consumer and bridge).

A site powers up in any order: rather than exit with a traceback, the process
logs one line per attempt naming the bootstrap servers and retries with capped
exponential backoff (``edge.backoff``) until the broker answers or it is asked
to stop.

Over TLS, kafka-python reports a refused handshake (wrong CA, certificate
required, host name) only as "Unable to bootstrap"; after such a failure the
handshake is repeated with the clients' own context (``edge.tls``) and the
line says what TLS refused, and which ``[kafka]`` key to look at.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from edge.backoff import Backoff
from edge.tls import first_tls_problem
from ingest import metrics
from ingest.config import KafkaConfig

logger = logging.getLogger(__name__)

UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError)
FIRST_DELAY_S = 0.5


@contextmanager
def kafka_library_quiet(quiet: bool) -> Iterator[None]:
    """kafka-python logs several lines per failed bootstrap; keep retries to our one line."""
    lib = logging.getLogger("kafka")
    level = lib.level
    if quiet:
        lib.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        lib.setLevel(level)


def tls_problem(kafka: KafkaConfig) -> str | None:
    """What TLS refuses with the bootstrap servers, or None (not a TLS problem, or no TLS)."""
    if not kafka.tls:
        return None
    return first_tls_problem(kafka.bootstrap_addresses(), kafka.ssl_context(),
                             kafka.connect_timeout_s)


def wait_for_kafka(
    connect: Callable[[], None], kafka: KafkaConfig, stop: threading.Event, consequence: str,
) -> bool:
    """Call ``connect`` until it stops raising an unreachable-broker error.

    True once connected; False if ``stop`` was set meanwhile. ``consequence``
    tells the operator what waits meanwhile (it ends the log line).
    """
    backoff = Backoff(FIRST_DELAY_S, max(kafka.reconnect_max_s, FIRST_DELAY_S))
    while not stop.is_set():
        try:
            # its detail once, not on every retry
            with kafka_library_quiet(backoff.attempts > 0):
                connect()
            return True
        except UNREACHABLE as exc:
            delay = backoff.next_delay()
            problem = tls_problem(kafka)
            if problem is None:
                logger.error(
                    "Kafka is not reachable at bootstrap servers %s (%s); retrying in %.1f s "
                    "(%s)", kafka.servers, exc, delay, consequence)
            else:
                logger.error(
                    "Kafka at bootstrap servers %s: %s (see [kafka] ssl_cafile, ssl_certfile, "
                    "ssl_keyfile, ssl_check_hostname); retrying in %.1f s (%s)",
                    kafka.servers, problem, delay, consequence)
            metrics.KAFKA_CONNECT_RETRIES.inc()
            stop.wait(delay)
    return False
