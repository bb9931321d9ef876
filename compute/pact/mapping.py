"""Stored footprints → PACT v3 ``ProductFootprint`` objects. Pure: records in, dicts out.

One batch revision maps to one ProductFootprint; a product over a period is the
production-weighted aggregate of its batches (Σ kgCO2e ÷ Σ declared units, the
primary data share and the data-quality ratings weighted by kgCO2e). What each
PACT property holds and why is in docs/certification.md; in short:

- the pCF is the stored kgCO2e (market- or location-based, ``[pact]
  electricity_basis``) ÷ declared units; every emission counted is fossil
  (grid generation and on-site fuel), and the boundary has no biogenic uptake;
- the reference period runs from the first to the last counter interval whose
  energy went into the number;
- ids are UUIDv5 of the company, site, batch and revision, so one revision
  keeps its id and every new revision gets a new one (PACT v3 lifecycle).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from compute.errors import ComputeError
from compute.pact import dqi
from compute.pact.records import FactorRow, FootprintRecord
from compute.pact.schema import PACT_SPEC_VERSION
from compute.site import Product, SiteModel

__all__ = ["Identity", "PactMappingError", "batch_footprint", "product_footprint"]

# UUIDv5 namespace of plantprint's PACT ids (uuid5(NAMESPACE_URL, "urn:plantprint:pact"))
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:plantprint:pact")
BOUNDARY = {
    "electricity": "purchased electricity",
    "natural_gas": "on-site combustion of natural gas",
    "steam": "purchased steam",
    "heat": "purchased heat",
}
GB_T_24067 = {
    "operator": "Other",
    "ruleNames": ["GB/T 24067-2024 温室气体 产品碳足迹 量化要求和指南 (Greenhouse gases — "
                  "Carbon footprint of products — Requirements and guidelines for "
                  "quantification)"],
    "otherOperatorName": "SAMR/SAC (State Administration for Market Regulation, "
                         "Standardization Administration of China)",
}


class PactMappingError(ComputeError):
    """A footprint that cannot be stated honestly in PACT terms (the message says why)."""


@dataclass(frozen=True)
class Identity:
    """The data owner and the accounting choices of ``[pact]``."""

    company_name: str
    company_ids: tuple[str, ...]
    electricity_basis: str  # "market" | "location"
    ipcc: tuple[str, ...]


@dataclass
class Figures:
    """Sums over one or more batch revisions, in kgCO2e and declared units."""

    kg: float = 0.0  # the stored kgCO2e of the basis
    units: float = 0.0
    carrier_kg: float = 0.0  # Σ energy × factor (equals kg to rounding)
    measured_kg: float = 0.0  # of it, from measured (not estimated) energy
    dqr: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # × kg
    rows: dict[int, FactorRow] = field(default_factory=dict)
    carriers: set[str] = field(default_factory=set)
    meters: set[str] = field(default_factory=set)
    flags: set[str] = field(default_factory=set)
    start: datetime | None = None
    end: datetime | None = None

    def add(self, other: Figures) -> None:
        self.kg += other.kg
        self.units += other.units
        self.carrier_kg += other.carrier_kg
        self.measured_kg += other.measured_kg
        self.dqr = [a + b for a, b in zip(self.dqr, other.dqr, strict=True)]
        self.rows.update(other.rows)
        self.carriers |= other.carriers
        self.meters |= other.meters
        self.flags |= other.flags
        self.start = min(filter(None, (self.start, other.start)))
        self.end = max(filter(None, (self.end, other.end)))


def decimal(x: float) -> str:
    """A PACT decimal string (no exponent) that reads back as exactly ``x``."""
    text = format(Decimal(repr(float(x))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _factor_rows(rec: FootprintRecord, factors: Mapping[int, FactorRow], basis: str,
                 ) -> dict[str, FactorRow]:
    """Carrier → the row behind the basis' number (market falls back to location)."""
    rows = [factors[i] for i in rec.factor_ids if i in factors]
    if len(rows) != len(rec.factor_ids):
        missing = sorted(set(rec.factor_ids) - set(factors))
        raise PactMappingError(f"batch {rec.batch_id}: emission_factor rows {missing} missing")
    loc = {r.carrier: r for r in rows if r.kind == "location"}
    if basis == "location":
        return loc
    return {**loc, **{r.carrier: r for r in rows if r.kind == "market"}}


def figures(rec: FootprintRecord, model: SiteModel, factors: Mapping[int, FactorRow],
            basis: str) -> Figures:
    """One revision's figures; refuses what PACT could not carry honestly."""
    where = f"batch {rec.batch_id} (site {rec.site}, revision {rec.revision})"
    if not rec.declared_units:
        raise PactMappingError(f"{where}: no declared units (product {rec.product!r} not in "
                               f"the site model, or batch unit {rec.unit!r} not kg or t)")
    missing = sorted(f for f in rec.flags if f.startswith("no_factor:"))
    if missing:
        raise PactMappingError(f"{where}: {', '.join(missing)}: that energy has no emissions "
                               "in the stored number; add the factor row first")
    rows = _factor_rows(rec, factors, basis)
    kg_c = {c: e * rows[c].value for c, e in rec.energy.items() if c in rows}
    measured = sum((e - rec.estimated.get(c, 0.0)) * rows[c].value
                   for c, e in rec.energy.items() if c in rows)
    kg = rec.kgco2e_market if basis == "market" else rec.kgco2e_location
    r = dqi.rate({c: rows[c] for c in kg_c}, kg_c, rec.start_ts.date(), model.site,
                 model.geography, model.grid_region)
    return Figures(
        kg=kg, units=rec.declared_units, carrier_kg=sum(kg_c.values()), measured_kg=measured,
        dqr=[r.technological * kg, r.geographical * kg, r.temporal * kg],
        rows={rows[c].id: rows[c] for c in kg_c}, carriers=set(rec.energy),
        meters={m for m in model.meters if rec.asset in model.scope(m)}, flags=set(rec.flags),
        start=rec.activity_start, end=rec.activity_end)


def _product(model: SiteModel, sku: str) -> tuple[str, list[str], Product]:
    p = model.products.get(sku)
    key = f"site {model.site}: products.{sku}"
    if p is None:
        raise PactMappingError(f"{key}: not in the site model")
    if not p.product_ids:
        raise PactMappingError(f"{key}.product_ids: PACT needs at least one product id URN "
                               "(GTIN, article number …), e.g. urn:gtin:…")
    if p.fossil_carbon_content_kg is None:
        raise PactMappingError(f"{key}.fossil_carbon_content_kg: PACT needs the product's "
                               "fossil carbon content (kgC per declared unit; 0 for mineral "
                               "products)")
    return p.name or sku, list(p.product_ids), p


def _fossil_carbon(p: Product) -> float:
    if p.fossil_carbon_content_kg is None:  # _product refuses it first; here for the type
        raise PactMappingError("fossil_carbon_content_kg unknown")
    return p.fossil_carbon_content_kg


def _geography(geo: str) -> dict[str, str]:
    return ({"geographyCountrySubdivision": geo} if "-" in geo else {"geographyCountry": geo})


def _allocation_rules(model: SiteModel, meters: Iterable[str]) -> str:
    parts = []
    for mid in sorted(meters):
        m = model.meters[mid]
        if m.role == "asset":
            split = model.assets[m.asset or ""].split
            parts.append(f"{mid} ({m.carrier}) serves {m.asset}: sub-division by overlap "
                         f"time, concurrent batches by {split}")
        elif m.role == "shared":
            parts.append(f"{mid} ({m.carrier}) shared by {', '.join(m.assets)}: by {m.rule}")
        else:
            parts.append(f"{mid} ({m.carrier}) incomer: residual less its sub-meters "
                         f"({', '.join(m.children)}) by {m.rule} over "
                         f"{', '.join(model.scope(mid))}")
    idle = {"unallocated": "kept as unallocated overhead (in no batch)",
            "next_batch": "given to the next batch on the meter's scope"}[model.idle_policy]
    return ("ISO 14044 order, from the site model: " + "; ".join(parts)
            + f". Energy drawn while no batch runs is {idle}. Physical allocation only: "
            "no economic allocation.")


def _boundary(fig: Figures) -> str:
    carriers = ", ".join(BOUNDARY.get(c, c) for c in sorted(fig.carriers))
    return (f"Gate-to-gate, energy only: {carriers}, metered on site "
            f"(meters {', '.join(sorted(fig.meters))}) and allocated to the product. "
            "Not included: raw materials and their upstream emissions (not cradle-to-gate), "
            "process emissions (e.g. calcination), fuel and electricity upstream "
            "(well-to-tank, grid losses beyond the factor), transport, packaging, waste.")


def _pcf(fig: Figures, model: SiteModel, p: Product, ident: Identity) -> dict[str, Any]:
    per_unit = decimal(fig.kg / fig.units)
    share = fig.measured_kg / fig.carrier_kg if fig.carrier_kg > 0 else 1.0
    sources = sorted({(f"{r.source}: {r.publication}", f"data period {r.period_start}"
                       f" to {'open' if r.period_end == dqi.OPEN_END else r.period_end}"
                       f", {r.value:g} {r.unit}, emission_factor id {r.id}")
                      for r in fig.rows.values()})
    pcf: dict[str, Any] = {
        "declaredUnitOfMeasurement": p.declared_unit,
        "declaredUnitAmount": "1",
        "productMassPerDeclaredUnit": decimal(p.mass_per_declared_unit_kg),
        "referencePeriodStart": iso(fig.start) if fig.start else None,
        "referencePeriodEnd": iso(fig.end) if fig.end else None,
        **_geography(model.geography),
        "boundaryProcessesDescription": _boundary(fig),
        "pcfExcludingBiogenicUptake": per_unit,
        "pcfIncludingBiogenicUptake": per_unit,  # no biogenic uptake inside the boundary
        "fossilGhgEmissions": per_unit,  # grid generation and fuel burnt: all fossil
        "fossilCarbonContent": decimal(_fossil_carbon(p)),
        "packagingEmissionsIncluded": False,
        "ccsTechnologicalCO2CaptureIncluded": False,
        "ipccCharacterizationFactors": list(ident.ipcc),
        "crossSectoralStandards": ["ISO14067", "GHGP-Product"],
        "productOrSectorSpecificRules": [GB_T_24067],
        "exemptedEmissionsPercent": "0",
        "exemptedEmissionsDescription": "Nothing inside the gate-to-gate energy boundary is "
                                        "exempted; what lies outside it is listed in "
                                        "boundaryProcessesDescription.",
        "allocationRulesDescription": _allocation_rules(model, fig.meters),
        "primaryDataShare": decimal(round(100.0 * share, 6)),
        "dqi": {k: decimal(round(v / fig.kg if fig.kg > 0 else 1.0, 2)) for k, v in
                zip(("technologicalDQR", "geographicalDQR", "temporalDQR"), fig.dqr,
                    strict=True)},
    }
    if sources:
        pcf["secondaryEmissionFactorSources"] = [{"name": n, "version": v} for n, v in sources]
    return pcf


def _envelope(pf_id: uuid.UUID, created: datetime, active: bool, name: str,
              ids: list[str], p: Product, description: str, comment: str, ident: Identity,
              pcf: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(pf_id), "specVersion": PACT_SPEC_VERSION, "created": iso(created),
        "status": "Active" if active else "Deprecated",
        "companyName": ident.company_name, "companyIds": list(ident.company_ids),
        "productDescription": description, "productIds": ids,
        "productNameCompany": name, "comment": comment, "pcf": pcf,
    }
    if p.classifications:
        out["productClassifications"] = list(p.classifications)
    return out


def footprint_id(ident: Identity, site: str, key: str) -> uuid.UUID:
    return uuid.uuid5(ID_NAMESPACE, f"{ident.company_ids[0]}|{site}|{key}")


def batch_urn(site: str, batch_id: str) -> str:
    return f"urn:plantprint:batch:{quote(site, safe='-._~')}:{quote(batch_id, safe='-._~')}"


def _check_identity(ident: Identity) -> None:
    if not ident.company_name or not ident.company_ids:
        raise PactMappingError("[pact] company_name and company_ids: PACT requires the data "
                               "owner's name and at least one company id URN")


def batch_footprint(rec: FootprintRecord, model: SiteModel, factors: Mapping[int, FactorRow],
                    ident: Identity) -> dict[str, Any]:
    """The ProductFootprint of one final or revised batch revision."""
    _check_identity(ident)
    name, ids, p = _product(model, rec.product)
    fig = figures(rec, model, factors, ident.electricity_basis)
    other = rec.kgco2e_location if ident.electricity_basis == "market" else rec.kgco2e_market
    comment = (
        f"Batch {rec.batch_id} of {rec.product} on {rec.asset} at site {rec.site}, revision "
        f"{rec.revision} ({rec.status}), {rec.quantity:g} {rec.unit} = "
        f"{rec.declared_units:g} declared units, batch {iso(rec.start_ts)} to "
        f"{iso(rec.end_ts) if rec.end_ts else '?'}. Computed by plantprint from metered "
        f"energy; pCF {ident.electricity_basis}-based: {fig.kg:.6g} kgCO2e for the batch "
        f"({'location' if ident.electricity_basis == 'market' else 'market'}-based "
        f"{other:.6g} kgCO2e); expanded uncertainty (k = 2) of the energy, in kgCO2e "
        f"location-based: {rec.kgco2e_uncertainty:.3g}. Emission factors are CO2-only where "
        f"their gas basis says CO2. Flags: {', '.join(rec.flags) or 'none'}. Inputs "
        f"SHA-256 {rec.inputs_sha256}.")
    pf = _envelope(
        footprint_id(ident, rec.site, f"batch|{rec.batch_id}|{rec.revision}"),
        rec.computed_at, rec.newest, name, [*ids, batch_urn(rec.site, rec.batch_id)], p,
        f"{name}: production batch {rec.batch_id} ({rec.quantity:g} {rec.unit}) on "
        f"{rec.asset}", comment, ident, _pcf(fig, model, p, ident))
    earlier = [str(footprint_id(ident, rec.site, f"batch|{rec.batch_id}|{r}"))
               for r in rec.earlier]
    if earlier:
        pf["precedingPfIds"] = earlier
    return pf


def product_footprint(recs: Sequence[FootprintRecord], model: SiteModel,
                      factors: Mapping[int, FactorRow], ident: Identity, sku: str,
                      period: tuple[datetime, datetime], provisional: Sequence[str] = (),
                      ) -> dict[str, Any]:
    """The production-weighted ProductFootprint of ``sku`` over the newest certified
    revision of each of its batches in ``recs`` (batches that ended in ``period``);
    ``provisional``: batches of the period not final yet, named in the comment."""
    _check_identity(ident)
    name, ids, p = _product(model, sku)
    newest, unmapped, total = [], [], Figures()
    for rec in recs:
        if not (rec.newest and rec.product == sku and rec.site == model.site):
            continue
        try:  # a batch PACT cannot carry is named in the comment, not summed unseen
            fig = figures(rec, model, factors, ident.electricity_basis)
        except PactMappingError as exc:
            unmapped.append(f"{rec.batch_id} ({exc})")
            continue
        newest.append(rec)
        total.add(fig)
    if not newest:
        raise PactMappingError(f"site {model.site}: no final footprint of {sku} in the period"
                               + (f" that PACT can carry: {'; '.join(unmapped)}"
                                  if unmapped else ""))
    batches = ", ".join(f"{r.batch_id} r{r.revision}" for r in newest)
    key = f"product|{sku}|{iso(period[0])}|{iso(period[1])}|{batches}"
    comment = (
        f"Production-weighted aggregate of {len(newest)} batches of {sku} at site "
        f"{model.site} that ended from {iso(period[0])} to before {iso(period[1])}: "
        f"{batches}. pCF = Σ kgCO2e ÷ Σ declared units = {total.kg:.6g} ÷ "
        f"{total.units:g}, {ident.electricity_basis}-based. Flags of the batches: "
        f"{', '.join(sorted(total.flags)) or 'none'}. Not final yet, so left out: "
        f"{', '.join(provisional) or 'none'}."
        + (f" Left out, cannot be mapped: {'; '.join(unmapped)}." if unmapped else ""))
    created = max(r.computed_at for r in newest)  # fixed by its inputs, as the id is
    return _envelope(footprint_id(ident, model.site, key), created, True, name, ids, p,
                     f"{name}: production of {iso(period[0])} to {iso(period[1])} at "
                     f"{model.site}", comment, ident, _pcf(total, model, p, ident))
