"""Footprint lifecycle decisions, pure: which batches are final, how far back to keep.

``provisional`` while a batch runs → ``final`` once it has ended, every meter
in its scope has reported past its end, and every batch it shares a meter with
has ended too (their quantities weight the split); or once the site's data has
run ``final_timeout_s`` past its end with meters still silent (they are
flagged ``missing:<meter>``); or, when a batch it shares a meter with runs on
for more than ``WEIGHTS_TIMEOUT_NS`` (a day) of data, or has ended without a
quantity for ``final_timeout_s``, with the split weighted provisionally (flagged
``weights_unknown:<batch>``) → ``revised`` when late
data changes a final number (a new revision).

Time here is *data time* (the newest reading of the site), never the wall
clock, so a restarted worker reaches the same decisions as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from compute.model import Batch

Status = str  # "provisional" | "final" | "revised"
WEIGHTS_TIMEOUT_NS = 86_400 * 10**9
IDLE_HOLD_NS = 86_400 * 10**9  # next_batch: idle energy waits this long for a next batch


@dataclass(frozen=True)
class Finality:
    final: bool
    missing: tuple[str, ...] = ()  # meters that had not reported past the end (timeout)
    waiting_for: tuple[str, ...] = ()  # batches whose weights were still unknown (timeout)


def finality(batch: Batch, coverage: Mapping[str, int], scope_meters: Sequence[str],
             others: Sequence[Batch], data_now_ns: int, timeout_ns: int,
             events_until: int) -> Finality:
    """Whether ``batch`` can be final now; ``coverage``: meter → up to when its data is
    complete; ``events_until``: every batch event before it is known (a concurrent batch
    starting in ``batch``'s time would change its share)."""
    if batch.end_ns is None:
        return Finality(False)
    missing = tuple(m for m in scope_meters if coverage.get(m, 0) <= batch.end_ns)
    if events_until <= batch.end_ns:
        missing += ("(batch events)",)
    open_weights = tuple(b.batch_id for b in others if b.end_ns is None or b.quantity is None)
    if not missing and not open_weights:
        return Finality(True)
    late = data_now_ns - batch.end_ns
    # a batch still running may legitimately run for hours: wait a day for its weight;
    # one that has ended without a quantity (the MES sends it with the end) is given
    # ``final_timeout_s`` like a silent meter, not a day
    running = any(b.end_ns is None for b in others)
    if open_weights and late < (max(timeout_ns, WEIGHTS_TIMEOUT_NS) if running
                                else timeout_ns):
        return Finality(False)  # a number that the other batch's quantity will change
    if late >= timeout_ns:
        return Finality(True, missing, open_weights)
    return Finality(False)


def window_start(batches: Sequence[Batch], final_ids: set[str], idle_next: bool,
                 coverage_floor: int, assets: Iterable[str], settled_until: int,
                 data_now_ns: int) -> int:
    """The earliest time any non-final batch may still draw energy from.

    Intervals ending at or before it are settled: their allocation is stored
    and they leave memory. With ``unallocated`` idle energy that is the first
    start of a non-final batch, or everything reported when there is none.
    With ``next_batch``, idle energy belongs to the next batch to start on the
    asset, so per asset the window reaches back to the end of its last final
    batch before its first non-final one, and an asset with no batch running
    holds its idle energy since its last batch until the next one starts —
    at most ``IDLE_HOLD_NS`` (a day), after which it is settled as unallocated.
    Never beyond what every live meter has reported (``coverage_floor``).
    """
    open_batches = [b for b in batches if b.batch_id not in final_ids]
    if not idle_next:
        anchor = min((b.start_ns for b in open_batches), default=coverage_floor)
        return min(anchor, coverage_floor)
    w = coverage_floor
    for asset in assets:
        mine = [b for b in batches if b.asset == asset]
        open_mine = [b for b in mine if b.batch_id not in final_ids]
        if open_mine:
            anchor = min(b.start_ns for b in open_mine)
            ends = [b.end_or_open for b in mine
                    if b.batch_id in final_ids and b.end_or_open <= anchor]
        else:
            ends = [b.end_or_open for b in mine]
        w = min(w, max(ends, default=settled_until))
    return max(w, min(coverage_floor, data_now_ns - IDLE_HOLD_NS))


def infer_ends(batches: Sequence[Batch], limits: Mapping[str, int]) -> list[Batch]:
    """``batches`` with the ends their assets' limits imply (order kept).

    An asset that runs at most ``limits[asset]`` batches at once (a kiln: 1) and sees
    one more start has finished its earliest open batch by then, whatever happened to
    the MES's end event (lost across an OPC UA restart, a PLC replaced): that batch
    ends at the new start, flagged ``end_inferred``. A real end, when it comes, is
    used instead. Pure and a function of the batch set alone, so a restored worker
    and one cut into other micro-batches infer the same ends.
    """
    out = list(batches)
    by_asset: dict[str, list[int]] = {}
    for k, b in enumerate(out):
        if b.asset in limits:
            by_asset.setdefault(b.asset, []).append(k)
    for asset, idx in by_asset.items():
        idx.sort(key=lambda k: (out[k].start_ns, out[k].batch_id))
        running: list[int] = []  # by start
        for k in idx:
            start = out[k].start_ns
            running = [j for j in running if out[j].end_or_open > start]
            while len(running) >= limits[asset]:
                j = running.pop(0)
                if out[j].end_ns is None:  # a real end inside another's run is left alone
                    out[j] = replace(out[j], end_ns=start, end_inferred=True)
            running.append(k)
    return out


def changed(old: Mapping[str, float], new: Mapping[str, float], rel: float = 1e-9) -> bool:
    """Whether two energy maps differ beyond floating-point noise."""
    if set(old) != set(new):
        return True
    return any(abs(old[k] - new[k]) > rel * max(abs(old[k]), abs(new[k]), 1e-12) for k in old)
