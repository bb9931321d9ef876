"""Batch footprints from a site's allocation: energy per carrier, factors, uncertainty, flags.

Pure: a :class:`compute.allocate.SiteAllocation`, the site's intervals (for
their flags), the factor rows chosen per carrier and the site model in; one
:class:`Footprint` per batch out, with a SHA-256 over the exact inputs it used
(the batch, every share of every interval, the factor rows) so a certified
number can be tied to its evidence.

The primary data share is emissions-weighted, as PACT defines it: the share of
the batch's location-based kgCO2e that comes from measured (not estimated)
energy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from compute import kernels
from compute.allocate import SiteAllocation
from compute.model import F64, I64, Batch, Intervals

FLAG_NAMES = {
    kernels.GAP: "gap", kernels.ROLLOVER: "rollover", kernels.RESET: "reset",
    kernels.SPIKE: "spike", kernels.CATCH_UP: "catch_up",
}


@dataclass(frozen=True)
class Factor:
    """The factor row a footprint used for one carrier and kind."""

    factor_id: int
    value: float  # kgCO2e per canonical unit
    source: str


@dataclass
class Footprint:
    batch: Batch
    energy: dict[str, float] = field(default_factory=dict)  # carrier -> canonical unit
    estimated: dict[str, float] = field(default_factory=dict)
    uncertainty: dict[str, float] = field(default_factory=dict)  # expanded, k = 2
    per_meter: dict[str, float] = field(default_factory=dict)
    carbon_meter_kg: dict[str, float] = field(default_factory=dict)  # meter -> its own kgCO2
    carbon_meter_energy: dict[str, float] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    kgco2e_location: float = 0.0
    kgco2e_market: float = 0.0
    kgco2e_uncertainty: float = 0.0
    primary_data_share: float = 1.0
    factor_ids: list[int] = field(default_factory=list)
    inputs_sha256: str = ""


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


@dataclass
class _Pairs:
    """Every meter's (interval, batch) shares of a site, grouped by batch then meter (in the
    allocation's meter order), each group in interval order: one group per footprint line."""

    meters: list[str]
    batch: I64
    meter: I64  # index into meters
    energy: F64
    estimated: F64
    uncertainty: F64
    guessed: F64  # energy estimated for a reset or a spike
    flags: I64
    end: I64
    co2: F64  # the carbon meter's kg x the pair's share of the interval (NaN: none)

    @classmethod
    def of(cls, alloc: SiteAllocation, series: Mapping[str, Intervals]) -> _Pairs:
        names: list[str] = []
        parts: list[tuple[np.ndarray, ...]] = []
        for meter, ma in alloc.meters.items():
            if len(ma.batch) == 0:
                continue
            iv = series[meter]
            flags = iv.flags[ma.interval]
            iv_energy = iv.energy[ma.interval]
            share = np.divide(ma.energy, iv_energy, out=np.zeros(len(ma.energy)),
                              where=iv_energy > 0)
            parts.append((np.full(len(ma.batch), len(names)), ma.batch, ma.energy,
                          ma.estimated, ma.uncertainty,
                          np.where((flags & (kernels.RESET | kernels.SPIKE)) != 0, ma.energy, 0.0),
                          flags, iv.end[ma.interval], iv.co2[ma.interval] * share))
            names.append(meter)
        if not parts:
            no_i, no_f = np.zeros(0, np.int64), np.zeros(0)
            return cls(names, no_i, no_i, no_f, no_f, no_f, no_f, no_i, no_i, no_f)
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        order = np.lexsort((cols[0], cols[1]))  # by batch, then meter; stable
        m, b, e, est, unc, g, f, end, co2 = (c[order] for c in cols)
        return cls(names, b, m, e, est, unc, g, f, end, co2)


def _accumulate(fps: Mapping[str, Footprint], batches: Sequence[Batch], p: _Pairs,
                carriers: Mapping[str, str], resolutions: Mapping[str, float],
                digests: Mapping[str, hashlib._Hash]) -> None:
    if len(p.batch) == 0:
        return
    key = p.batch * len(p.meters) + p.meter
    lo = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    hi = np.append(lo[1:], len(key)).tolist()
    energy, estimated, unc, guessed, co2 = (np.add.reduceat(a, lo).tolist() for a in (
        p.energy, p.estimated, p.uncertainty, p.guessed, p.co2))
    bits = np.bitwise_or.reduceat(p.flags, lo).tolist()
    for g, (a, z, b, m) in enumerate(zip(lo.tolist(), hi, p.batch[lo].tolist(),
                                         p.meter[lo].tolist(), strict=True)):
        meter = p.meters[m]
        carrier = carriers[meter]
        fp = fps[batches[b].batch_id]
        _add(fp.energy, carrier, energy[g])
        _add(fp.estimated, carrier, estimated[g])
        # counter quantisation (at most one count at each end of the batch's span), the
        # boundary spread, and half of any energy guessed for a reset or a spike (the
        # counter said nothing of it: last measured rate x time)
        _add(fp.uncertainty, carrier, unc[g] + 2 * resolutions.get(meter, 0.0)
             + 0.5 * guessed[g])
        fp.per_meter[meter] = fp.per_meter.get(meter, 0.0) + energy[g]
        fp.flags.update(f"{name}:{meter}" for bit, name in FLAG_NAMES.items() if bits[g] & bit)
        if co2[g] == co2[g]:  # every interval had a CO2 reading (a NaN would spread)
            fp.carbon_meter_kg[meter] = co2[g]
            fp.carbon_meter_energy[meter] = energy[g]
        # the arrays as orjson writes numpy (the same bytes as their lists, without them)
        digests[fp.batch.batch_id].update(orjson.dumps([meter, p.end[a:z], p.energy[a:z]],
                                                       option=orjson.OPT_SERIALIZE_NUMPY))


def batch_footprints(
    alloc: SiteAllocation,
    series: Mapping[str, Intervals],
    carriers: Mapping[str, str],
    resolutions: Mapping[str, float],
    factors_for: Callable[[Batch], tuple[Mapping[str, Factor], Mapping[str, Factor]]],
) -> dict[str, Footprint]:
    """One footprint per batch of ``alloc`` (batch id → footprint).

    ``carriers``/``resolutions``: per meter, its carrier and counter resolution
    (canonical unit); ``factors_for(batch)``: per carrier, the location- and
    market-based factor rows for the batch's own time (its start).
    A carrier without a factor row contributes energy but no kgCO2e, and the
    footprint is flagged ``no_factor:<carrier>``.
    """
    fps = {b.batch_id: Footprint(b) for b in alloc.batches}
    digests = {b.batch_id: hashlib.sha256(orjson.dumps(
        [b.batch_id, b.asset, b.product, b.start_ns, b.end_ns, b.quantity, b.unit]))
        for b in alloc.batches}
    _accumulate(fps, alloc.batches, _Pairs.of(alloc, series), carriers, resolutions, digests)
    for bid, fp in fps.items():
        fp.methods = alloc.methods.get(bid, set())
        if fp.batch.end_inferred:
            fp.flags.add("end_inferred")
        _apply_factors(fp, *factors_for(fp.batch))
        fp.inputs_sha256 = _finish_digest(digests[bid], fp)
    return fps


def _apply_factors(fp: Footprint, location: Mapping[str, Factor],
                   market: Mapping[str, Factor]) -> None:
    measured_kg = 0.0
    used: set[int] = set()
    for carrier, energy in fp.energy.items():
        loc, mkt = location.get(carrier), market.get(carrier)
        if loc is None:
            fp.flags.add(f"no_factor:{carrier}")
            continue
        used.add(loc.factor_id)
        fp.kgco2e_location += energy * loc.value
        measured_kg += (energy - fp.estimated.get(carrier, 0.0)) * loc.value
        fp.kgco2e_uncertainty += fp.uncertainty.get(carrier, 0.0) * loc.value
        mkt = mkt or loc
        used.add(mkt.factor_id)
        fp.kgco2e_market += energy * mkt.value
    fp.factor_ids = sorted(used)
    fp.primary_data_share = measured_kg / fp.kgco2e_location if fp.kgco2e_location > 0 else 1.0


def _finish_digest(h: hashlib._Hash, fp: Footprint) -> str:
    h.update(orjson.dumps(fp.factor_ids))
    return h.hexdigest()


def carbon_meter_flags(fp: Footprint, location: Mapping[str, Factor], tolerance: float,
                       co2_resolution_kg: Mapping[str, float]) -> None:
    """Flag a smart carbon meter whose own kgCO2 for the batch strays from ours by more
    than ``tolerance`` (relative) beyond its counter's resolution (one count each end)."""
    loc = location.get("electricity")
    if loc is None:
        return
    for meter, kg in fp.carbon_meter_kg.items():
        ours = fp.carbon_meter_energy.get(meter, 0.0) * loc.value
        allowed = tolerance * ours + 2 * co2_resolution_kg.get(meter, 0.0)
        if ours > 0 and abs(kg - ours) > allowed:
            fp.flags.add(f"carbon_meter_deviation:{meter}")
