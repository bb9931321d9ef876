"""The forwarder: order, multi-output acks, retries, and a SIGKILL drill with real Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge import wire
from edge.forward import ForwardConfig, Forwarder, PublishError
from edge.spool import Spool, SpoolConfig, SpooledMessage
from tests.edge.kafka_helpers import consume

REPO = Path(__file__).resolve().parents[2]


class Recorder:
    """A test output that records what it was sent and fails the first ``fail`` calls."""

    max_frame_bytes = None  # no limit of its own

    def __init__(self, name: str, fail: int = 0, crash: int = 0) -> None:
        self.name = name
        self.fail = fail
        self.crash = crash  # then raise this many unexpected (non-PublishError) errors
        self.calls = 0
        self.sent: list[tuple[str, int]] = []

    async def start(self) -> None:
        return None

    async def publish(self, msgs: Sequence[SpooledMessage]) -> None:
        self.calls += 1
        if self.calls <= self.fail:
            raise PublishError(f"{self.name}: down")
        if self.calls <= self.fail + self.crash:
            raise RuntimeError(f"{self.name}: a bug in the output")
        self.sent.extend((m.stream, m.seq) for m in msgs)

    async def close(self) -> None:
        return None


async def test_ack_only_after_every_output_and_no_resend_to_the_one_that_took_it(
    tmp_path: Path,
) -> None:
    good, flaky = Recorder("kafka"), Recorder("mqtt", fail=3)
    cfg = ForwardConfig(batch_frames=4, backoff_initial_s=0.001, backoff_max_s=0.01)
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        for _ in range(10):
            spool.append("readings", lambda n: b"r%d" % n)
        spool.append("batches", lambda n: b"b%d" % n)
        forwarder = Forwarder(spool, [good, flaky], cfg)
        async with asyncio.timeout(10):
            await forwarder.drain()
        assert spool.depth == 0
    expected = [("readings", i) for i in range(10)] + [("batches", 0)]
    assert good.sent == expected  # not re-sent while mqtt was retried
    assert flaky.sent == expected
    assert forwarder.failures == 3


async def test_an_unexpected_output_error_is_logged_and_retried_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # a publisher bug (any exception but PublishError) once killed the run loop: the
    # agent then kept polling and spooling but never forwarded again
    buggy = Recorder("kafka", crash=2)
    cfg = ForwardConfig(backoff_initial_s=0.001, backoff_max_s=0.01, idle_poll_s=0.01)
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        for _ in range(3):
            spool.append("readings", lambda n: b"r%d" % n)
        forwarder = Forwarder(spool, [buggy], cfg)
        runner = asyncio.create_task(forwarder.run())
        try:
            async with asyncio.timeout(10):
                await forwarder.drained()
            assert not runner.done()
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        assert spool.depth == 0
    assert buggy.sent == [("readings", i) for i in range(3)]
    assert forwarder.failures == 2
    assert "output kafka raised an unexpected error" in caplog.text


@pytest.mark.timeout(120)
def test_sigkill_of_a_forwarding_writer_loses_no_frame(broker_factory, tmp_path) -> None:
    broker = broker_factory()
    key = wire.generate_private_key()
    key_pem = tmp_path / "gw.pem"
    wire.write_private_key(key_pem, key)  # owner-only: load_private_key refuses others
    spool_path = tmp_path / "spool.db"
    args = [str(spool_path), broker.bootstrap, "kill.", str(key_pem)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    promised: list[int] = []
    for _round in range(3):
        child = subprocess.Popen([sys.executable, "-m", "tests.edge.forward_drill", *args, "run"],
                                 cwd=REPO, stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None
        target = len(promised) + 100 + int.from_bytes(os.urandom(1), "big")
        while len(promised) < target:
            line = child.stdout.readline()
            assert line, "writer died early"
            promised.append(int(line))
        child.send_signal(signal.SIGKILL)
        child.wait()
        rest = child.stdout.read().decode().splitlines(keepends=True)
        promised.extend(int(line) for line in rest if line.endswith("\n"))
        child.stdout.close()
    drain = subprocess.run([sys.executable, "-m", "tests.edge.forward_drill", *args, "drain"],
                           cwd=REPO, env=env, timeout=90, check=False)
    assert drain.returncode == 0
    with Spool(SpoolConfig(path=spool_path), "gw-drill") as spool:
        assert spool.depth == 0
        last = spool.next_seq("readings") - 1
    records = consume(broker.bootstrap, "kill.readings", last + 1)
    keys = {"gw-drill": key.public_key()}
    seqs = [wire.decode(value, keys).seq for _key, value in records]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(last + 1)), "a frame was lost or reordered"
    assert set(promised) <= set(seqs)
