"""What a batch certificate shows, read from the database in one transaction.

The newest final or revised revision of the batch, every revision before it,
the factor rows it used, the intervals of its meters around its run (the
energy timeline), its allocation by meter and rule, its gaps, and the root
hash of its evidence bundle (``batch_evidence``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from compute import kernels
from compute.evidence.collect import footprint_revisions
from compute.site import SiteModel
from compute.store import ns_sql, ts_sql

Conn = psycopg.Connection[tuple[object, ...]]
MARGIN_NS = 1_800 * 10**9  # the timeline shows half an hour either side of the batch


@dataclass
class MeterShare:
    meter: str
    carrier: str
    role: str
    rule: str  # the asset's split, or the shared/parent meter's rule
    energy: float
    unit: str
    share: float  # of the batch's energy of that carrier


@dataclass
class Certificate:
    footprint: dict[str, Any]
    revisions: list[dict[str, Any]]
    model: SiteModel
    factors: list[dict[str, Any]]
    shares: list[MeterShare]
    # meter -> (start ns, end ns, energy) of its intervals around the batch
    timeline: dict[str, tuple[list[int], list[int], list[float]]]
    gaps: list[dict[str, Any]]
    root: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def footprint_id(self) -> str:
        fp = self.footprint
        return f"{fp['site']}/{fp['batch_id']}/{fp['revision']}"

    @property
    def qr_payload(self) -> str:
        """What the label's QR code carries: the footprint id and the bundle's root hash."""
        return f"urn:plantprint:footprint:{self.footprint_id}#sha256={self.root or 'none'}"


def _shares(fp: dict[str, Any], model: SiteModel) -> list[MeterShare]:
    per_meter: dict[str, float] = (fp.get("detail") or {}).get("per_meter", {})
    totals = fp["energy"]
    out = []
    for meter, energy in sorted(per_meter.items(), key=lambda kv: -kv[1]):
        m = model.meters.get(meter)
        carrier = m.carrier if m else "?"
        if m is None:
            rule = "?"
        elif m.role == "asset":
            rule = f"sub-division, split {model.assets[m.asset].split}" if m.asset else "?"
        else:
            rule = f"{'residual' if m.role == 'parent' else 'shared'} by {m.rule}"
        total = totals.get(carrier) or 0.0
        out.append(MeterShare(meter, carrier, m.role if m else "?", rule, energy,
                              fp["energy_unit"].get(carrier, ""),
                              energy / total if total else 0.0))
    return out


def load_certificate(conn: Conn, model: SiteModel, batch_id: str) -> Certificate | None:
    """The certificate of ``batch_id`` at ``model``'s site; None without a final number."""
    site = model.site
    revisions = footprint_revisions(conn, site, batch_id)
    if not revisions:
        return None
    fp = revisions[-1]
    factors = [dict(zip(("id", "carrier", "region", "period_start", "period_end", "value",
                         "unit", "kind", "variant", "source", "publication", "note"), r,
                        strict=True)) for r in conn.execute(
        "SELECT id, carrier, region, period_start, period_end, value, unit, kind, variant, "
        "source, publication, note FROM emission_factor WHERE id = ANY(%s) ORDER BY id",
        (fp["factor_ids"],)).fetchall()]
    meters = list(model.meters_for_asset(fp["asset"]))
    lo, hi = int(fp["start_ns"]) - MARGIN_NS, int(fp["end_ns"]) + MARGIN_NS
    timeline: dict[str, tuple[list[int], list[int], list[float]]] = {}
    gaps = []
    cur = conn.cursor()
    cur.execute(f"SELECT meter, {ns_sql('start_ts')}, {ns_sql('end_ts')}, energy, flags "
                f"FROM energy_interval WHERE site = %s AND meter = ANY(%s) AND end_ts > "
                f"{ts_sql('%s')} AND start_ts < {ts_sql('%s')} ORDER BY meter, end_ts",
                (site, meters, lo, hi))
    rows: list[tuple[str, int, int, float, int]] = cur.fetchall()  # type: ignore[assignment]
    for meter, s, e, energy, flags in rows:
        t = timeline.setdefault(meter, ([], [], []))
        t[0].append(s)
        t[1].append(e)
        t[2].append(energy)
        if flags & kernels.GAP and e > fp["start_ns"] and s < fp["end_ns"]:
            gaps.append({"meter": meter, "start_ns": s, "end_ns": e, "energy": energy})
    row = conn.execute(
        "SELECT root_sha256 FROM batch_evidence WHERE (site, batch_id, revision) = (%s, %s, %s)"
        " ORDER BY created_at DESC, root_sha256 LIMIT 1",
        (site, batch_id, fp["revision"])).fetchone()
    return Certificate(fp, revisions, model, factors, _shares(fp, model), timeline, gaps,
                       None if row is None else str(row[0]))
