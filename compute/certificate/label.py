"""The product carbon label: the batch's footprint per declared unit and a QR code carrying
the footprint id and its evidence bundle's root hash (segno), as SVG and as PNG.

The QR payload (:attr:`Certificate.qr_payload`) is
``urn:plantprint:footprint:<site>/<batch>/<revision>#sha256=<root>``: a reader
finds the footprint record by its id and checks the bundle with
``python -m compute verify BUNDLE --root <root>``.
"""

from __future__ import annotations

import io
from html import escape

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import segno

from compute.certificate.data import Certificate


def qr_code(cert: Certificate) -> segno.QRCode:
    return segno.make(cert.qr_payload, error="m", micro=False)


def headline(cert: Certificate) -> tuple[str, str]:
    """(figure, unit) the label shows: location-based kgCO2e per declared unit, or the
    batch total when the product has no declared units."""
    fp = cert.footprint
    product = cert.model.products.get(fp["product"])
    if fp["per_unit_location"] is not None and product is not None:
        return f"{fp['per_unit_location']:.4g}", f"kg CO2e / {product.declared_unit}"
    return f"{fp['kgco2e_location']:.4g}", "kg CO2e (batch)"


def label_svg(cert: Certificate) -> str:
    fp = cert.footprint
    value, unit = headline(cert)
    qr = qr_code(cert).svg_inline(scale=3, border=2)
    lines = [
        ("Product carbon footprint", 15, "bold"),
        (f"{fp['product']}  ·  batch {fp['batch_id']}", 11, "normal"),
        (f"{value} {unit}", 22, "bold"),
        (f"batch total {fp['kgco2e_location']:.1f} kg CO2e (location), "
         f"{fp['kgco2e_market']:.1f} (market)", 9, "normal"),
        (f"primary data {fp['primary_data_share'] * 100:.1f} %  ·  {fp['status']} "
         f"revision {fp['revision']}", 9, "normal"),
        ("gate-to-gate energy · ISO 14067 · GHG Protocol Product", 8, "normal"),
        (f"evidence root {(cert.root or 'not bundled')[:16]}…", 8, "normal"),
    ]
    y, text = 24, []
    for content, size, weight in lines:
        text.append(f'<text x="12" y="{y}" font-size="{size}" font-weight="{weight}">'
                    f"{escape(content)}</text>")
        y += size + 9
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="520" height="190" '
            'viewBox="0 0 520 190" font-family="DejaVu Sans, Arial, sans-serif">'
            '<rect x="1" y="1" width="518" height="188" rx="10" fill="#ffffff" '
            'stroke="#2a9d8f" stroke-width="2"/>' + "".join(text)
            + f'<g transform="translate(380,30)">{qr}</g></svg>')


def label_png(cert: Certificate, dpi: int = 150) -> bytes:
    fp = cert.footprint
    value, unit = headline(cert)
    matrix = np.array([list(row) for row in qr_code(cert).matrix], dtype=float)
    matrix = np.pad(matrix, 4)  # the quiet zone a reader needs
    fig = plt.figure(figsize=(5.2, 1.9), dpi=dpi)
    fig.text(0.03, 0.82, "Product carbon footprint", fontsize=11, weight="bold")
    fig.text(0.03, 0.66, f"{fp['product']} · batch {fp['batch_id']}", fontsize=8)
    fig.text(0.03, 0.42, f"{value} {unit}", fontsize=15, weight="bold")
    fig.text(0.03, 0.26, f"primary data {fp['primary_data_share'] * 100:.1f} % · "
                         f"{fp['status']} revision {fp['revision']}", fontsize=7)
    fig.text(0.03, 0.12, f"evidence root {(cert.root or 'not bundled')[:16]}…", fontsize=6)
    ax = fig.add_axes((0.68, 0.04, 0.3, 0.92))
    ax.imshow(1 - matrix, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
