"""ListFootprints' filters and paging (PACT v3 3.0.3, *Filtering* and *Pagination*).

Within a criterion the values are ORed, across criteria ANDed. Text matches are
case-insensitive. A geography matches the footprint's country, its country
subdivision, or the country of its subdivision (``CN`` finds ``CN-SX``). The
validity period is the footprint's own, or PACT's default when it gives none:
3 years from the end of the reference period. Each value is checked against
the parameter's schema in the shipped OpenAPI document, so what the document
calls invalid is refused (BadRequest) rather than ignored. Pure.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from compute.pact.schema import openapi

__all__ = ["Query", "QueryError", "is_uuid", "parse"]

LIST_PARAMS = ("productId", "companyId", "geography", "classification")
TIME_PARAMS = ("validOn", "validAfter", "validBefore")
DEFAULT_VALIDITY = timedelta(days=3 * 365 + 1)  # 3 years (one leap day)
_URN = re.compile(r"^([uU][rR][nN]):")


class QueryError(ValueError):
    pass


@dataclass
class Query:
    values: dict[str, set[str]] = field(default_factory=dict)  # lower-cased
    times: dict[str, datetime] = field(default_factory=dict)
    status: str | None = None
    limit: int | None = None
    offset: int = 0

    def matches(self, pf: dict[str, Any]) -> bool:
        pcf = pf["pcf"]
        have = {
            "productId": {v.lower() for v in pf.get("productIds", ())},
            "companyId": {v.lower() for v in pf.get("companyIds", ())},
            "classification": {v.lower() for v in pf.get("productClassifications", ())},
            "geography": _geographies(pcf),
        }
        if any(not (want & have[k]) for k, want in self.values.items()):
            return False
        if self.status is not None and pf["status"].lower() != self.status:
            return False
        start, end = validity(pf)
        t = self.times
        return not (("validOn" in t and not start <= t["validOn"] <= end)
                    or ("validAfter" in t and not start > t["validAfter"])
                    or ("validBefore" in t and not end < t["validBefore"]))


def _geographies(pcf: dict[str, Any]) -> set[str]:
    out = {pcf[k].lower() for k in ("geographyCountry", "geographyCountrySubdivision",
                                    "geographyRegionOrSubregion") if k in pcf}
    sub = pcf.get("geographyCountrySubdivision")
    if sub:
        out.add(sub[:2].lower())
    return out


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise QueryError(f"{text!r} has no UTC offset")
    return t


def validity(pf: dict[str, Any]) -> tuple[datetime, datetime]:
    ref_end = _time(pf["pcf"]["referencePeriodEnd"])
    start = _time(pf["validityPeriodStart"]) if "validityPeriodStart" in pf else ref_end
    end = (_time(pf["validityPeriodEnd"]) if "validityPeriodEnd" in pf
           else ref_end + DEFAULT_VALIDITY)
    return start, end


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def _non_negative(name: str, text: str) -> int:
    if not text.isdigit():
        raise QueryError(f"{name} must be a non-negative integer, got {text!r}")
    return int(text)


def parse(items: Iterable[tuple[str, str]]) -> Query:
    """The query of ListFootprints' parameters (repeated names: several values)."""
    q = Query()
    params = {p.get("name"): p for p in _declared()}
    for name, value in items:
        if name in LIST_PARAMS:
            if name != "geography" and not _URN.match(value):
                raise QueryError(f"{name}: {value!r} is not a URN (urn:…)")
            q.values.setdefault(name, set()).add(value.lower())
        elif name in TIME_PARAMS:
            try:
                q.times[name] = _time(value)
            except ValueError as exc:
                raise QueryError(f"{name}: {value!r} is not a date-time: {exc}") from exc
        elif name == "status":
            if value not in params["status"]["schema"]["enum"]:
                raise QueryError(f"status must be Active or Deprecated, got {value!r}")
            q.status = value.lower()
        elif name == "limit":
            q.limit = _non_negative(name, value)  # 0 (schema-valid): an empty page
        elif name == "offset":  # this host's pagination links
            q.offset = _non_negative(name, value)
        elif not name.startswith("x-"):
            raise QueryError(f"unknown parameter {name!r}")
    return q


def _declared() -> list[dict[str, Any]]:
    """ListFootprints' parameters, their $refs resolved."""
    doc = openapi()
    out = []
    for p in doc["paths"]["/3/footprints"]["get"]["parameters"]:
        ref = p.get("$ref")
        out.append(doc["components"]["parameters"][ref.rsplit("/", 1)[1]] if ref else p)
    return out
