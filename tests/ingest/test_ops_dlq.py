"""``dlq list`` and ``dlq redrive`` against the real broker and a running ingest: records are
listed with their reason, a dry run produces nothing, truncated records are never re-driven,
and errors name what is wrong (unknown reason, missing offsets, Kafka not reachable)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from functools import partial

import orjson
import pytest
from ingest_helpers import Gateway, read_topic, run_cli, send_all, stored_offsets, wait_for

from edge.wire import MAGIC
from ingest.migrate import migrate
from ingest.ops_dlq import KNOWN_REASONS
from ingest.ops_dlq_cli import main as dlq_main

pytestmark = pytest.mark.services
IDLE = "0.5"  # s without a DLQ record before a read-back ends (2 s by default)


run = partial(run_cli, dlq_main)


def test_bad_signature_is_listed_dry_run_produces_nothing_truncated_is_refused(
    services, new_database, make_config, producer, topic_prefix, ingest_process, writer_login
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-ops", meters=2)
    impostor = Gateway("gw-ops", meters=2)  # the same id signing with another key
    forged = impostor.frame_bytes(seq=1)
    huge = MAGIC + bytes(64) + b" " * 8000  # above max_frame_bytes: cut to dlq_max_bytes
    cfg = make_config(writer_login(dsn), [g], kafka={"dlq_max_bytes": 1024},
                      limits={"max_frame_bytes": 4096})
    ingest_process("--config", str(cfg)).start()
    topic = f"{topic_prefix}readings"
    sent = [g.frame_bytes(seq=0), forged, huge, g.frame_bytes(seq=2)]
    send_all(producer, topic, sent)
    wait_for(lambda: stored_offsets(dsn) >= len(sent), 30, "ingest consumed the four messages")

    code, out, err = run("list", "--config", cfg, "--idle-s", IDLE)
    assert code == 0, err
    [sig_row] = [line for line in out.splitlines() if "signature does not verify" in line]
    assert "bad_signature" in sig_row and "gw-ops" in sig_row and f"{topic}/" in sig_row
    assert f"1024 (truncated from {len(huge)})" in out
    assert f"2 dead letter(s) in {topic_prefix}dlq: bad_signature 1, too_large 1" in out

    code, out, err = run("list", "--config", cfg, "--reason", "bad_signature", "--json",
                         "--idle-s", IDLE)
    [rec] = [orjson.loads(line) for line in out.splitlines()]
    assert (rec["reason"], rec["gateway"], rec["source_topic"], rec["source_offset"]) == (
        "bad_signature", "gw-ops", topic, 1)
    assert rec["value_sha256"] == hashlib.sha256(forged).hexdigest() and rec["size"] == len(forged)
    assert "signature" in rec["detail"] and rec["truncated_from"] is None

    code, out, err = run("redrive", "--config", cfg, "--reason", "bad_signature", "--dry-run",
                         "--idle-s", IDLE)
    assert code == 0, err
    assert "would re-drive 1 record(s)" in out and "dry run: nothing was produced" in out
    code, out, err = run("redrive", "--config", cfg, "--reason", "too_large", "--idle-s", IDLE)
    assert code == 1
    assert "re-drove 0 record(s); 1 refused (1 truncated" in out
    assert "never re-driven" in out and f"kept 1024 of its {len(huge)} bytes" in out
    missing = f"{rec['dlq_partition']}:{rec['dlq_offset'] + 7}"
    code, out, err = run("redrive", "--config", cfg, "--offsets",
                         f"{rec['dlq_partition']}@{rec['dlq_offset']},{missing}", "--idle-s", IDLE)
    assert code == 2 and f"not in {topic_prefix}dlq: {missing}" in err and "nothing" in err
    assert len(read_topic(services.kafka_bootstrap, topic, len(sent) + 1, timeout_s=1.0)) \
        == len(sent), "nothing was produced"


def test_errors_name_the_reason_selection_and_broker(make_config, tmp_path) -> None:
    cfg = make_config("postgresql://127.0.0.1:1/none", [])
    code, _, err = run("list", "--config", cfg, "--reason", "seq-conflict")
    assert code == 2 and "unknown DLQ reason 'seq-conflict'" in err
    assert all(r in err for r in KNOWN_REASONS)
    code, _, err = run("redrive", "--config", cfg)
    assert code == 2 and "redrive needs a selection" in err
    code, _, err = run("redrive", "--config", cfg, "--offsets", "0-17")
    assert code == 2 and "expected PARTITION:OFFSET" in err
    cli = subprocess.run([sys.executable, "-m", "ingest", "dlq", "list", "--config", str(cfg),
                          "--reason", "nope"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "unknown DLQ reason 'nope'" in cli.stderr

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = make_config("postgresql://127.0.0.1:1/none", [], name="dead.toml",
                       kafka={"bootstrap_servers": [f"127.0.0.1:{port}"], "connect_timeout_s": 1.0})
    started = time.monotonic()
    code, out, err = run("redrive", "--config", dead, "--reason", "seq_conflict")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert f"Kafka is not reachable at bootstrap servers 127.0.0.1:{port}" in err
    assert time.monotonic() - started < 5, "a bounded wait, not a hang"
