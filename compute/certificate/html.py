"""The certificate page: one self-contained HTML file (CSS inline, chart as a data URI,
label as inline SVG) rendered from a Jinja2 template with autoescaping."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from jinja2 import Environment, PackageLoader, select_autoescape

from compute.certificate.chart import energy_timeline_png
from compute.certificate.data import Certificate
from compute.certificate.label import label_svg
from compute.evidence.collect import code_version

_ENV = Environment(loader=PackageLoader("compute.certificate", "templates"),
                   autoescape=select_autoescape(["html", "j2"]), keep_trailing_newline=True)


def _iso(ns: int | None) -> str:
    if ns is None:
        return "—"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def certificate_html(cert: Certificate, chart_png: bytes | None = None) -> str:
    fp = cert.footprint
    product = cert.model.products.get(fp["product"])
    detail = fp.get("detail") or {}
    return _ENV.get_template("certificate.html.j2").render(
        fp=fp, footprint_id=cert.footprint_id, root=cert.root,
        product_name=product.name if product and product.name else fp["product"],
        declared_unit=product.declared_unit if product else "declared unit",
        per_unit=fp["per_unit_location"], geography=cert.model.geography,
        idle_policy=cert.model.idle_policy, start=_iso(fp["start_ns"]), end=_iso(fp["end_ns"]),
        estimated=detail.get("estimated", {}), methods=detail.get("methods", []),
        shares=cert.shares, factors=cert.factors,
        gaps=[{**g, "start": _iso(g["start_ns"]), "end": _iso(g["end_ns"])} for g in cert.gaps],
        fp_revisions=cert.revisions,
        chart_png=base64.b64encode(chart_png or energy_timeline_png(cert)).decode(),
        label_svg=label_svg(cert), code_version=code_version()["plantprint"])
