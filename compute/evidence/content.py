"""What a bundle holds, as canonical bytes per member, and back.

Every member is UTF-8 JSON written by orjson with sorted keys and no
whitespace, so the same evidence always gives the same bytes (and the same
hashes). Tables are JSON Lines, one row per line as a JSON array in the column
order of :data:`COLUMNS`; timestamps are UTC epoch ns (integers, microsecond
precision as stored), energies in the carrier's canonical unit, missing
values ``null``. ``docs/certification.md`` (*Evidence bundles*) lists the
columns for a reader without this code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from compute.errors import ComputeError

FORMAT = "plantprint-evidence/1"

# member -> its columns (JSON Lines members); the order is the order in each row
COLUMNS: dict[str, tuple[str, ...]] = {
    "readings.jsonl": ("meter", "channel", "ts_ns", "value", "unit", "quality", "gateway",
                       "seq", "frame_sha256"),
    "batch_events.jsonl": ("asset", "batch_id", "product", "kind", "ts_ns", "quantity", "unit",
                           "gateway", "seq"),
    "batches.jsonl": ("batch_id", "asset", "product", "start_ns", "end_ns", "quantity", "unit"),
    "state_changes.jsonl": ("asset", "ts_ns", "code"),
    "intervals.jsonl": ("meter", "carrier", "start_ns", "end_ns", "energy", "estimated", "flags",
                        "power_start", "power_end", "co2"),
    "allocations.jsonl": ("meter", "end_ns", "batch_id", "energy", "rule"),
    "factors.jsonl": ("id", "carrier", "region", "period_start", "period_end", "value", "unit",
                      "kind", "variant", "gas_basis", "source", "publication", "valid_from",
                      "valid_to", "note", "supersedes", "added_by", "added_at"),
}
# single JSON documents
DOCUMENTS = ("footprint.json", "revisions.json", "site_model.json", "settings.json",
             "code.json")
MANIFEST = "manifest.json"
# kept in the order of the site file, not sorted: compute allocates meters of one depth
# in the file's order, and that order is part of the footprint's inputs hash
IN_FILE_ORDER = frozenset({"site_model.json"})

Row = list[Any]


class BundleError(ComputeError):
    """A bundle that cannot be written or read (the message names the batch or member)."""


def canonical(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass
class Evidence:
    """One batch's evidence: JSON Lines tables (member → rows) and documents."""

    tables: dict[str, list[Row]] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)

    def rows(self, member: str) -> list[dict[str, Any]]:
        cols = COLUMNS[member]
        return [dict(zip(cols, r, strict=True)) for r in self.tables.get(member, [])]

    def lines(self, member: str) -> list[bytes]:
        return [canonical(r) for r in self.tables.get(member, [])]

    def to_members(self) -> dict[str, bytes]:
        """Member name → bytes, manifest excluded (see :mod:`compute.evidence.manifest`)."""
        out = {m: b"".join(line + b"\n" for line in self.lines(m)) for m in COLUMNS}
        out.update({d: (orjson.dumps(self.documents[d]) if d in IN_FILE_ORDER
                        else canonical(self.documents[d])) + b"\n" for d in DOCUMENTS})
        return out

    @classmethod
    def from_members(cls, members: Mapping[str, bytes]) -> Evidence:
        ev = cls()
        for m, cols in COLUMNS.items():
            data = members.get(m)
            if data is None:
                raise BundleError(f"bundle has no {m}")
            rows = []
            for n, line in enumerate(data.splitlines(), 1):
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise BundleError(f"{m} line {n}: not JSON ({exc})") from exc
                if not isinstance(row, list) or len(row) != len(cols):
                    raise BundleError(f"{m} line {n}: expected a row of {len(cols)} columns "
                                      f"({', '.join(cols)})")
                rows.append(row)
            ev.tables[m] = rows
        for d in DOCUMENTS:
            data = members.get(d)
            if data is None:
                raise BundleError(f"bundle has no {d}")
            try:
                ev.documents[d] = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise BundleError(f"{d}: not JSON ({exc})") from exc
        return ev
