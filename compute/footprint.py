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
from compute.allocate import MeterAllocation, SiteAllocation
from compute.model import Batch, Intervals

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


def _accumulate(fp_by_id: Mapping[str, Footprint], batches: Sequence[Batch], meter: str,
                carrier: str, alloc: MeterAllocation, iv: Intervals,
                resolution: float, digests: Mapping[str, hashlib._Hash]) -> None:
    if len(alloc.batch) == 0:
        return
    for b in np.unique(alloc.batch):
        rows = np.flatnonzero(alloc.batch == b)
        fp = fp_by_id[batches[int(b)].batch_id]
        energy = float(alloc.energy[rows].sum())
        _add(fp.energy, carrier, energy)
        _add(fp.estimated, carrier, float(alloc.estimated[rows].sum()))
        # counter quantisation (at most one count at each end of the batch's span), the
        # boundary spread, and half of any energy guessed for a reset or a spike (the
        # counter said nothing of it: last measured rate x time)
        guessed = (iv.flags[alloc.interval[rows]] & (kernels.RESET | kernels.SPIKE)) != 0
        _add(fp.uncertainty, carrier, float(alloc.uncertainty[rows].sum()) + 2 * resolution
             + 0.5 * float(alloc.energy[rows][guessed].sum()))
        fp.per_meter[meter] = fp.per_meter.get(meter, 0.0) + energy
        ivs = alloc.interval[rows]
        for bit, name in FLAG_NAMES.items():
            if np.any(iv.flags[ivs] & bit):
                fp.flags.add(f"{name}:{meter}")
        co2 = iv.co2[ivs]
        if np.isfinite(co2).all() and len(co2):
            share = np.divide(alloc.energy[rows], iv.energy[ivs],
                              out=np.zeros(len(rows)), where=iv.energy[ivs] > 0)
            fp.carbon_meter_kg[meter] = float((co2 * share).sum())
            fp.carbon_meter_energy[meter] = energy
        digests[fp.batch.batch_id].update(orjson.dumps(
            [meter, iv.end[ivs].tolist(), alloc.energy[rows].tolist()]))


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
    for meter, m_alloc in alloc.meters.items():
        _accumulate(fps, alloc.batches, meter, carriers[meter], m_alloc, series[meter],
                    resolutions.get(meter, 0.0), digests)
    for bid, fp in fps.items():
        fp.methods = alloc.methods.get(bid, set())
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
