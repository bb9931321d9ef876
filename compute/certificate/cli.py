"""``python -m compute --config server.toml certificate --batch ID [--out DIR]``.

Writes ``<batch>.html`` (the certificate), ``<batch>.label.svg`` and
``<batch>.label.png`` into DIR (default: the current folder), and with
``--pdf`` ``<batch>.pdf`` printed by headless Chromium (exit 2 without it). A batch whose
revision has no evidence bundle yet gets one first (``<batch>.evidence.tar.gz``
in DIR, recorded), so the label always carries a root hash that verifies.
Exit 0; 2 when the batch has no final footprint or the database cannot answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compute.certificate.chart import energy_timeline_png
from compute.certificate.data import load_certificate
from compute.certificate.html import certificate_html
from compute.certificate.label import label_png, label_svg
from compute.certificate.pdf import print_pdf
from compute.commands import run_command
from compute.evidence.bundle import write_bundle
from compute.evidence.collect import find_sites
from compute.evidence.content import BundleError
from compute.site import load_sites
from ingest.config import ServerConfig
from ingest.db import connect


def certificate_main(argv: list[str], cfg: ServerConfig, config_path: Path) -> int:
    ap = argparse.ArgumentParser(prog="python -m compute certificate",
                                 description="a batch's certificate page and carbon label")
    ap.add_argument("--batch", required=True)
    ap.add_argument("--site", help="when the batch id exists at several sites")
    ap.add_argument("--out", type=Path, default=Path("."), help="folder (created)")
    ap.add_argument("--pdf", action="store_true", help="also <batch>.pdf (headless Chromium)")
    args = ap.parse_args(argv)
    models = load_sites(cfg.compute.sites, config_path.parent)
    dsn = cfg.database.dsn.get_secret_value()

    def work() -> int:
        with connect(dsn) as conn:
            sites = [args.site] if args.site else find_sites(conn, args.batch)
            if len(sites) != 1 or sites[0] not in models:
                raise BundleError(f"batch {args.batch}: found at sites {sites or 'none'}; "
                                  "name one with a site model (--site)")
            model = models[sites[0]]
            cert = load_certificate(conn, model, args.batch)
            if cert is None:
                raise BundleError(f"batch {args.batch} has no final footprint yet")
            args.out.mkdir(parents=True, exist_ok=True)
            if cert.root is None:
                write_bundle(conn, models, cfg.compute.gap_s, args.batch,
                             args.out / f"{args.batch}.evidence.tar.gz", model.site)
                cert = load_certificate(conn, model, args.batch)
                assert cert is not None and cert.root is not None
        page = args.out / f"{args.batch}.html"
        page.write_text(certificate_html(cert, energy_timeline_png(cert)), encoding="utf-8")
        (args.out / f"{args.batch}.label.svg").write_text(label_svg(cert), encoding="utf-8")
        (args.out / f"{args.batch}.label.png").write_bytes(label_png(cert))
        print(f"{page}\nfootprint {cert.footprint_id}\nroot {cert.root}")
        if args.pdf:
            why_not = print_pdf(page, args.out / f"{args.batch}.pdf")
            if why_not is not None:
                print(f"compute certificate: {why_not}", file=sys.stderr)
                return 2
            print(args.out / f"{args.batch}.pdf")
        return 0

    return run_command("compute certificate", dsn, work, (BundleError,))
