"""The ``bundle`` and ``verify`` subcommands' argument parsing and exit codes.

    python -m compute --config server.toml bundle --batch ID [--site S] [--out FILE]
    python -m compute verify BUNDLE [--root HEX]          # no server.toml, no database

``bundle`` exits 0 (printing the path and root hash), 2 on a refusal (no final
footprint, unknown site, unreachable database); ``verify`` exits 0 confirmed,
1 not confirmed (the differences are printed, the first first), 2 unreadable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compute.commands import run_command
from compute.evidence.bundle import write_bundle
from compute.evidence.content import BundleError
from compute.evidence.verify import verify_main
from compute.site import load_sites
from ingest.config import ServerConfig
from ingest.db import connect


def bundle_main(argv: list[str], cfg: ServerConfig, config_path: Path) -> int:
    ap = argparse.ArgumentParser(prog="python -m compute bundle",
                                 description="write a batch's evidence bundle")
    ap.add_argument("--batch", required=True)
    ap.add_argument("--site", help="when the batch id exists at several sites")
    ap.add_argument("--out", type=Path, help="archive path (default <batch>.evidence.tar.gz)")
    args = ap.parse_args(argv)
    models = load_sites(cfg.compute.sites, config_path.parent)
    dsn = cfg.database.dsn.get_secret_value()

    def work() -> int:
        with connect(dsn) as conn:
            path, root = write_bundle(conn, models, cfg.compute.gap_s, args.batch, args.out,
                                      args.site)
        print(f"{path}\nroot {root}")
        return 0

    return run_command("compute bundle", dsn, work, (BundleError,))


def verify_cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m compute verify",
                                 description="recompute a bundle's footprint and confirm it")
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--root", help="the root hash the bundle must have (certificate, label, "
                                   "batch_evidence)")
    args = ap.parse_args(argv)
    return verify_main(args.bundle, args.root)
