"""The worker's view of the emission-factor table: rows loaded once, chosen per carrier.

:func:`compute.factors.select_factor` decides; this module caches its answer per
(site, carrier, kind, day) and reloads the rows every ``reload_s`` so a factor
added with ``python -m compute factors add`` is used without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import psycopg

from compute.factors import FactorRow, load_factors, select_factor
from compute.footprint import Factor
from compute.site import SiteModel

Lookup = Callable[[str, str, int], Factor | None]


class HasConn(Protocol):
    @property
    def conn(self) -> psycopg.Connection[tuple[object, ...]]: ...


class FactorBook:
    def __init__(self, store: HasConn, reload_s: float = 300.0) -> None:
        self._store = store
        self._reload_s = reload_s
        self._rows: list[FactorRow] | None = None
        self._loaded = 0.0
        self._cache: dict[tuple[str, str, str, object], Factor | None] = {}

    def rows(self) -> list[FactorRow]:
        if self._rows is None or time.monotonic() - self._loaded > self._reload_s:
            with self._store.conn.transaction():
                self._rows = load_factors(self._store.conn)
            self._loaded = time.monotonic()
            self._cache.clear()
        return self._rows

    def lookup(self, model: SiteModel) -> Lookup:
        """(carrier, kind, at ns) → the factor row the site uses, or None."""
        def find(carrier: str, kind: str, at_ns: int) -> Factor | None:
            day = datetime.fromtimestamp(at_ns / 1e9, UTC).date()
            key = (model.site, carrier, kind, day)
            rows = self.rows()
            if key not in self._cache:
                row = select_factor(rows, carrier, model.grid_region, day,
                                    kind, site=model.site)  # type: ignore[arg-type]
                self._cache[key] = None if row is None else Factor(
                    row.id, row.value, f"{row.source} ({row.publication})")
            return self._cache[key]
        return find
