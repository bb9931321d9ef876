"""``python -m deploy.grafana build|push|sites`` (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deploy.grafana.build import build


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m deploy.grafana")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="write deploy/grafana/dashboards/*.json")
    p_push = sub.add_parser("push", help="create or update folder, datasources, dashboards "
                            "(GRAFANA_URL, GRAFANA_TOKEN, PLANTPRINT_GRAFANA_DSN)")
    p_push.add_argument("--update-password", action="store_true",
                        help="send the datasource password even when nothing else changed")
    p_sites = sub.add_parser("sites", help="store the site models of server.toml for the panels")
    p_sites.add_argument("--config", type=Path, required=True)
    p_sites.add_argument("--dsn", help="database (default: [database] dsn of --config)")
    args = ap.parse_args(argv)
    if args.command == "build":
        for path in build():
            print(path)
        return 0
    if args.command == "sites":
        import psycopg

        from deploy.grafana.sites import store_from_config
        from edge.settings import ConfigError

        try:
            stored = store_from_config(args.config, args.dsn)
        except (ConfigError, psycopg.Error) as exc:  # config, site model or database
            print(f"python -m deploy.grafana sites: error: {exc}", file=sys.stderr)
            return 2
        print(f"site models stored: {', '.join(stored)}")
        return 0
    from grafana_client.client import GrafanaException

    from deploy.grafana.push import PushError, from_environment, push

    try:
        api, db, prometheus = from_environment()
        report = push(api, db, prometheus, update_secrets=args.update_password)
    except (PushError, GrafanaException) as exc:
        print(f"python -m deploy.grafana push: error: {exc}", file=sys.stderr)
        return 2
    for kind in ("created", "updated", "unchanged"):
        for item in getattr(report, kind):
            print(f"{kind:9} {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
