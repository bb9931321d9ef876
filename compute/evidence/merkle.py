"""The Merkle tree hash over a bundle's readings, as RFC 6962 (section 2.1) defines it.

Leaves are hashed with a 0x00 prefix and inner nodes with 0x01, so a leaf can
never pass for a node (second-preimage resistance); a tree of n leaves splits
at the largest power of two below n. The root of an empty list is SHA-256 of
nothing. Each leaf is one line of ``readings.jsonl`` without its newline
(``docs/certification.md``, *Evidence bundles*).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of ``leaves`` (the leaf data, not yet hashed)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [leaf_hash(d) for d in leaves]
    return _root(level)


def _root(hashes: list[bytes]) -> bytes:
    n = len(hashes)
    if n == 1:
        return hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
    return node_hash(_root(hashes[:k]), _root(hashes[k:]))
