"""Store the site models in the database, for the dashboards' line, meter and product views.

Lines, which meter serves which asset and the products' targets live only in
the site model files compute runs with; Grafana reads them from ``site_model``
(migration 0012) through the views ``site_asset``, ``site_meter`` and
``site_product``. Run ``python -m deploy.grafana sites --config server.toml``
after a site model changes (the writer role may run it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from compute.site import SiteModel, load_sites
from ingest.config import load_config
from ingest.db import connect


def store_site_models(dsn: str, models: Mapping[str, tuple[SiteModel, str]]) -> list[str]:
    """Replace each site's row of ``site_model`` (model as JSON, its source file); one
    transaction for all. Returns the sites stored."""
    with connect(dsn) as conn, conn.transaction():
        for site, (model, source) in sorted(models.items()):
            conn.execute(
                "INSERT INTO site_model (site, model, source) VALUES (%s, %s::jsonb, %s) "
                "ON CONFLICT (site) DO UPDATE SET model = EXCLUDED.model, "
                "source = EXCLUDED.source, loaded_at = now()",
                (site, json.dumps(model.model_dump(mode="json")), source))
    return sorted(models)


def store_from_config(config: Path, dsn: str | None = None) -> list[str]:
    """The site models ``[compute] sites`` of ``server.toml`` names, loaded and checked as
    compute loads them, into ``[database] dsn`` (or ``dsn``)."""
    cfg = load_config(config)
    sites = load_sites(cfg.compute.sites, config.parent)
    models = {site: (model, str(cfg.compute.sites[site])) for site, model in sites.items()}
    return store_site_models(dsn or cfg.database.dsn.get_secret_value(), models)
