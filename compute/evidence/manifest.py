"""The manifest: a SHA-256 of every member, of every factor row and every setting, and
the Merkle root over the readings; the bundle's root hash is the SHA-256 of it.

Per-row and per-setting hashes let ``verify`` name what was altered (factor
row 23; ``meters.M-OVEN.rated``) rather than only "a file changed". The root
is what the footprint record (``batch_evidence``), the certificate and the
label carry: a bundle whose manifest was rewritten to match an altered member
no longer has that root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from compute.evidence.content import FORMAT, MANIFEST, Evidence, canonical
from compute.evidence.merkle import merkle_root

LEAF = "RFC 6962 Merkle tree hash; leaf = SHA-256(0x00 || one line of readings.jsonl " \
       "without its newline), node = SHA-256(0x01 || left || right)"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """Nested objects as dotted keys (``meters.M-OVEN.rated``); lists are values."""
    if isinstance(value, Mapping) and value:
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def setting_hashes(ev: Evidence) -> dict[str, str]:
    """Every site-model key (``site.<key>``) and bundle setting (``settings.<key>``)."""
    out = {f"site.{k}": sha256(canonical(v))
           for k, v in flatten(ev.documents["site_model.json"]).items()}
    out.update({f"settings.{k}": sha256(canonical(v))
                for k, v in flatten(ev.documents["settings.json"]).items()})
    return out


def factor_hashes(ev: Evidence) -> dict[str, str]:
    return {str(r[0]): sha256(canonical(r)) for r in ev.tables.get("factors.jsonl", [])}


def build(ev: Evidence, members: Mapping[str, bytes]) -> dict[str, Any]:
    fp = ev.documents["footprint.json"]
    lines = ev.lines("readings.jsonl")
    return {
        "format": FORMAT, "site": fp["site"], "batch_id": fp["batch_id"],
        "revision": fp["revision"], "inputs_sha256": fp["inputs_sha256"],
        "files": {name: sha256(data) for name, data in sorted(members.items())},
        "readings": {"count": len(lines), "merkle_root": merkle_root(lines).hex(),
                     "leaf": LEAF},
        "factors": factor_hashes(ev), "settings": setting_hashes(ev),
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return canonical(manifest) + b"\n"


def root_of(manifest_data: bytes) -> str:
    """The bundle's root hash: SHA-256 of ``manifest.json`` exactly as stored."""
    return sha256(manifest_data)


__all__ = ["LEAF", "MANIFEST", "build", "factor_hashes", "flatten", "manifest_bytes",
           "root_of", "setting_hashes", "sha256"]
