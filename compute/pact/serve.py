"""``python -m compute serve``: the PACT v3 API from the database, with uvicorn.

:class:`DbSource` maps the stored final and revised footprints exactly as
``export pact`` does, in read-only sessions, and records received events in
``pact_event`` (migration 0013). Use a login in role ``plantprint_pact``
(``[pact] dsn``): it can read footprints and add events, nothing else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from starlette.applications import Starlette

from compute.errors import ComputeError
from compute.pact.api import create_app
from compute.pact.auth import TokenStore
from compute.pact.export import identity
from compute.pact.mapping import Identity, PactMappingError, batch_footprint
from compute.pact.records import load_factors, load_records, open_reader
from compute.pact.schema import validate_footprint
from compute.site import SiteModel, load_sites
from ingest.config import ServerConfig
from ingest.db import connect

logger = logging.getLogger(__name__)
__all__ = ["DbSource", "build_app", "serve_main"]


class DbSource:
    """Footprints and events in PostgreSQL; the footprints are read fresh per request."""

    def __init__(self, dsn: str, sites: dict[str, SiteModel], ident: Identity) -> None:
        self._dsn = dsn
        self._sites = sites
        self._ident = ident
        self._validated: set[str] = set()
        self._refused: set[tuple[str, str, int]] = set()

    def footprints(self) -> Sequence[dict[str, Any]]:
        with open_reader(self._dsn) as conn:
            recs = [r for r in load_records(conn) if r.site in self._sites]
            factors = load_factors(conn, {i for r in recs for i in r.factor_ids})
        out = []
        for rec in recs:
            try:
                pf = batch_footprint(rec, self._sites[rec.site], factors, self._ident)
            except PactMappingError as exc:
                key = (rec.site, rec.batch_id, rec.revision)
                if key not in self._refused:  # said once per revision, not per request
                    self._refused.add(key)
                    logger.warning("not offered on the PACT API: %s", exc)
                continue
            if pf["id"] not in self._validated:
                validate_footprint(pf)
                self._validated.add(pf["id"])
            out.append(pf)
        return out

    def record_event(self, client_id: str, event: dict[str, Any]) -> None:
        with connect(self._dsn) as conn:
            conn.execute(
                "INSERT INTO pact_event (source, event_id, type, client_id, event_time, body) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (source, event_id) DO NOTHING",
                (event["source"], event["id"], event["type"], client_id,
                 _time(event.get("time")), orjson.dumps(event).decode()))


def _time(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def build_app(cfg: ServerConfig, config_path: Path) -> Starlette:
    pact = cfg.pact
    if not pact.clients:
        raise ComputeError(f"{config_path}: [pact.clients]: no client may call the API "
                           "(add [pact.clients.<id>] secret_hash = …)")
    if not pact.company_name or not pact.company_ids:
        raise ComputeError(f"{config_path}: [pact] company_name and company_ids are "
                           "required (PACT names the data owner on every footprint)")
    dsn = pact.dsn.get_secret_value() or cfg.database.dsn.get_secret_value()
    sites = load_sites(cfg.compute.sites, config_path.parent)
    clients = {cid: (c.secret_hash.get_secret_value(), frozenset(c.scopes))
               for cid, c in pact.clients.items()}
    return create_app(DbSource(dsn, sites, identity(pact)), clients,
                      TokenStore(pact.token_ttl_s))


def _writable(dsn: str) -> list[str]:
    """Footprint tables the login could change: the API should have none."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT t FROM unnest(ARRAY['batch_footprint', 'allocation', 'energy_interval', "
            "'emission_factor']) t WHERE has_table_privilege(t, 'INSERT,UPDATE,DELETE')"
        ).fetchall()
    return [r[0] for r in rows]


def serve_main(cfg: ServerConfig, config_path: Path) -> int:
    import uvicorn

    try:
        app = build_app(cfg, config_path)
        dsn = cfg.pact.dsn.get_secret_value() or cfg.database.dsn.get_secret_value()
        writable = _writable(dsn)
    except psycopg.Error as exc:
        print(f"compute serve: the database cannot answer: {exc}", file=sys.stderr)
        return 2
    if writable:
        logger.warning("the API's login may write %s: give it a login in role "
                       "plantprint_pact ([pact] dsn)", ", ".join(writable))
    pact = cfg.pact
    if (pact.tls_cert is None) != (pact.tls_key is None):
        raise ComputeError(f"{config_path}: [pact] tls_cert and tls_key: both or neither")
    if pact.tls_cert is None:
        logger.warning("PACT requires https: serving plain http (behind a TLS proxy?)")
    uvicorn.run(app, host=pact.addr, port=pact.port, log_level="info",
                ssl_certfile=str(pact.tls_cert) if pact.tls_cert else None,
                ssl_keyfile=str(pact.tls_key) if pact.tls_key else None)
    return 0
