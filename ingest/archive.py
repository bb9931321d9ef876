"""Signed envelopes kept for verifiers, past Kafka's retention: append-only files.

With ``[archive] dir`` set, the landing transaction appends the envelope of every
frame new to the ledger — the bytes exactly as the gateway signed them — to
``<dir>/<UTC day>.ppa`` and fsyncs it **before** the transaction commits, so every
landed row's frame is in the archive (a crash between the two leaves an extra
copy, which verifiers skip by digest). A record is a 4-byte big-endian length and
the envelope. Nothing in a file is ever rewritten (mount the folder append-only,
``chattr +a``, or ship the closed days to WORM storage).

:func:`find_reading` is the verifier's side: from the archive files and the
gateways' public keys alone — no database, no Kafka — it finds the envelopes
carrying a reading, checks each signature (``edge.wire.decode``), and returns
what the gateway signed: value, unit, quality, gateway, sequence number and the
body's SHA-256 (the ``ingested_frame.body_sha256`` of its ledger row).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from edge.wire import Frame, KeyRing, WireError, decode, signed_body
from ingest.config import load_config
from ingest.errors import IngestError

SUFFIX = ".ppa"
_LEN = 4


class EnvelopeArchive:
    """Appends envelopes to the day's file (UTC), fsynced before returning."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def append(self, envelopes: Sequence[bytes], when: datetime | None = None) -> Path:
        day = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{day}{SUFFIX}"
        with path.open("ab") as f:
            f.write(b"".join(len(e).to_bytes(_LEN, "big") + e for e in envelopes))
            f.flush()
            os.fsync(f.fileno())
        return path


def envelopes(folder: Path) -> Iterator[tuple[Path, int, bytes]]:
    """(file, byte offset, envelope) of every record, oldest day first."""
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        data = path.read_bytes()
        pos = 0
        while pos + _LEN <= len(data):
            n = int.from_bytes(data[pos:pos + _LEN], "big")
            yield path, pos, data[pos + _LEN:pos + _LEN + n]
            pos += _LEN + n


@dataclass(frozen=True, slots=True)
class Found:
    """A reading as its gateway signed it, and where it is in the archive."""

    site: str
    gateway: str
    seq: int
    meter: str
    channel: str
    ts_ns: int
    value: float | int
    unit: str
    quality: str
    body_sha256: str
    file: Path
    offset: int


def find_reading(folder: Path, keys: Mapping[str, KeyRing], site: str, meter: str,
                 channel: str, ts_us: int) -> tuple[list[Found], list[str]]:
    """Readings of (site, meter, channel) at ``ts_us`` (the database's microseconds) in
    envelopes whose signature verifies; and a note for each archived envelope that does
    not verify (tampered with, or signed by a key not given)."""
    found: dict[tuple[str, int], Found] = {}  # by body digest and reading: copies once
    refused: list[str] = []
    for path, offset, raw in envelopes(folder):
        try:
            msg = decode(raw, keys, max(len(raw), 1 << 24))
        except WireError as exc:
            refused.append(f"{path.name}@{offset}: {exc}")
            continue
        if not isinstance(msg, Frame) or msg.site != site:
            continue
        digest = hashlib.sha256(signed_body(raw)).hexdigest()
        for i, r in enumerate(msg.readings()):
            if (r.meter, r.channel, r.ts_ns // 1000) == (meter, channel, ts_us):
                found.setdefault((digest, i), Found(
                    site, msg.gateway, msg.seq, r.meter, r.channel, r.ts_ns, r.value, r.unit,
                    r.quality, digest, path, offset))
    return list(found.values()), refused


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """``python -m ingest archive verify``: exit 0 when the reading is found and verified."""
    out, err = out or sys.stdout, err or sys.stderr
    p = argparse.ArgumentParser(prog="python -m ingest archive")
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify", help="find a reading in the archive and check its signature")
    v.add_argument("--config", type=Path, required=True, help="server TOML (keys, [archive])")
    v.add_argument("--archive", type=Path, help="archive folder (default: [archive] dir)")
    for name in ("site", "meter", "channel"):
        v.add_argument(f"--{name}", required=True)
    v.add_argument("--ts", required=True, help="the reading's time, ISO 8601 with offset")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        folder = args.archive or cfg.archive.dir
        if folder is None:
            raise IngestError("no archive: pass --archive or set [archive] dir")
        ts = datetime.fromisoformat(args.ts)
        if ts.tzinfo is None:
            raise IngestError(f"--ts {args.ts}: needs a UTC offset")
        ts_us = (ts - datetime(1970, 1, 1, tzinfo=UTC)) // _MICRO
        found, refused = find_reading(folder, cfg.public_keys(), args.site, args.meter,
                                      args.channel, ts_us)
    except (IngestError, ValueError, OSError) as exc:
        err.write(f"python -m ingest archive verify: error: {exc}\n")
        return 2
    for note in refused:
        err.write(f"does not verify: {note}\n")
    for f in found:
        out.write(f"{f.site} {f.meter}/{f.channel} at {args.ts}: {f.value!r} {f.unit} "
                  f"({f.quality}), signed by gateway {f.gateway} in frame seq {f.seq}, body "
                  f"sha256 {f.body_sha256} ({f.file.name}@{f.offset}): signature verified\n")
    if not found:
        err.write("no verified reading with that key in the archive\n")
    return 0 if found else 1


_MICRO = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
