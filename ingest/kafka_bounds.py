"""Compressed Kafka record batches are expanded within a memory bound.

kafka-python expands a whole compressed record batch in memory while ``poll``
iterates it (gzip: ``GzipFile.read()``, unbounded), before any record reaches
ingest's own size check: 200 kB of gzip on ``readings`` that expands to 200 MiB
would take ingest's memory, and every restart would meet it again at the same
stored offset. :func:`install` makes that expansion bounded: gzip is inflated
with ``zlib`` ``max_length`` (never more than the bound plus one byte), and a
batch that expands past the bound, or that cannot be expanded at all (a codec
whose library is not installed, corrupt data), raises :class:`UnreadableBatch`
naming its offsets. The consumer then dead-letters a note of it and stores the
offset after the batch (``ingest.consumer``), so no restart meets it again.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any, Final

from kafka.record.default_records import DefaultRecordBatch

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS  # a gzip header and trailer around deflate


class UnreadableBatch(Exception):
    """A record batch not expanded: offsets ``base_offset`` ≤ o < ``next_offset``."""

    def __init__(self, base_offset: int, next_offset: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: record batch at offsets {base_offset}..{next_offset - 1}: "
                         f"{detail}")
        self.base_offset = base_offset
        self.next_offset = next_offset
        self.reason = reason  # the DLQ reason: too_large or unreadable_batch
        self.detail = str(self)


class _Expanded(ValueError):
    pass


def gunzip_bounded(data: bytes | memoryview, limit: int) -> bytes:
    """Inflate gzip ``data`` (one member or several), refusing more than ``limit`` bytes."""
    out: list[bytes] = []
    size = 0
    rest = bytes(data)
    while rest:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        chunk = inflater.decompress(rest, limit + 1 - size)
        size += len(chunk)
        if size > limit or inflater.unconsumed_tail:
            raise _Expanded(f"expands past {limit} bytes")
        out.append(chunk)
        if not inflater.eof:
            raise zlib.error("truncated gzip data")
        rest = inflater.unused_data
    return b"".join(out)


_state: dict[str, Any] = {"limit": None}
_lock = threading.Lock()


def install(limit: int) -> None:
    """Bound every record batch this process expands to ``limit`` bytes (idempotent; the
    last limit wins: one consumer per process)."""
    with _lock:
        if _state["limit"] is None:
            original = DefaultRecordBatch._maybe_uncompress
            DefaultRecordBatch._maybe_uncompress = _bounded(original)
        _state["limit"] = limit


def _bounded(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def maybe_uncompress(batch: Any) -> None:
        if batch._decompressed or batch.compression_type == batch.CODEC_NONE:
            original(batch)
            return
        limit = _state["limit"]
        try:
            if batch.compression_type == batch.CODEC_GZIP:
                data = memoryview(batch._buffer)[batch._pos:]
                batch._buffer = bytearray(gunzip_bounded(data, limit))
                batch._pos = 0
                batch._decompressed = True
                return
            original(batch)  # other codecs: their libraries' own decoders
            if len(batch._buffer) > limit:
                raise _Expanded(f"expands to {len(batch._buffer)} bytes, past {limit}")
        except _Expanded as exc:
            raise UnreadableBatch(batch.base_offset, batch.next_offset, "too_large",
                                  f"compressed batch {exc} ([limits] max_expanded_bytes)"
                                  ) from None
        except Exception as exc:  # an unsupported codec, corrupt data: never readable
            raise UnreadableBatch(batch.base_offset, batch.next_offset, "unreadable_batch",
                                  f"cannot expand: {type(exc).__name__}: {exc}") from exc

    return maybe_uncompress


def unreadable_partition(consumer: Any, exc: UnreadableBatch) -> tuple[str, int] | None:
    """The assigned partition whose position lies in the unreadable batch, when exactly
    one does (None otherwise: skipping a guess could skip a healthy partition's records)."""
    hits = [(tp.topic, tp.partition) for tp in consumer.assignment()
            if exc.base_offset <= consumer.position(tp) < exc.next_offset]
    return hits[0] if len(hits) == 1 else None
