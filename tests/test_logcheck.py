"""tests/logcheck.py: our tracebacks told from a library's own."""

from __future__ import annotations

from tests.logcheck import our_tracebacks


def test_a_librarys_own_traceback_is_told_from_ours() -> None:
    kafka = ("2026-12-01 06:08:30,001 ERROR kafka.net.transport: <conn>: Error receiving "
             "network data closing socket\nTraceback (most recent call last):\n  ...\n")
    ours = ("2026-12-01 06:08:31,002 ERROR ingest.consumer: boom\nTraceback (most recent "
            "call last):\n  ...\n")
    fine = "2026-12-01 06:08:29,000 INFO ingest.consumer: assigned\n"
    assert our_tracebacks(fine + kafka) == []
    assert our_tracebacks(fine + kafka + ours) == [ours]
    assert our_tracebacks("Traceback (most recent call last):\n" + fine) != []
