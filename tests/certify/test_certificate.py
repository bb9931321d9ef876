"""Batch certificates of the small plant: the page, its chart, the label and its QR code.

Written against a copy of the small plant's database (the certificate bundles
the batch first when no bundle is recorded). The QR code is decoded with
zxing-cpp from the label PNG, and from a screenshot of the page taken by
headless Chromium, which also shows the chart is drawn.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import psycopg
import pytest
import zxingcpp

from compute.__main__ import main as compute_main
from compute.certificate.pdf import print_pdf
from compute.evidence.verify import verify
from deploy import devstack
from tests.certify.test_evidence import copy_database, drop_database, server_toml

BATCH = "B-002"  # the oven batch: electricity, gas and steam


@pytest.fixture(scope="module")
def written(small_plant, services, tmp_path_factory: pytest.TempPathFactory  # type: ignore[no-untyped-def]
            ) -> Iterator[tuple[str, Path]]:
    """(DSN of the copy, folder) after `certificate --batch B-002 --out folder`."""
    name = copy_database(services.pg_admin_dsn, small_plant.database)
    dsn = devstack.with_dbname(services.pg_admin_dsn, name)
    # the demo has bundled every batch already; in this copy none is bundled, so the
    # certificate shows its own path: bundle first, record the root, label with it
    # (TRUNCATE, as the owner, is not the DELETE the append-only trigger refuses)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE batch_evidence")
    folder = tmp_path_factory.mktemp("certificate")
    config = server_toml(folder, dsn)
    assert compute_main(["--config", str(config), "certificate", "--batch", BATCH,
                         "--out", str(folder / "out")]) == 0
    yield dsn, folder / "out"
    drop_database(services.pg_admin_dsn, name)


def _record(dsn: str) -> dict[str, object]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM batch_footprint_evidence WHERE batch_id = %s",
                           (BATCH,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
        assert row is not None
        rec = dict(zip(names, row, strict=True))
        rec["revisions"] = conn.execute("SELECT count(*) FROM batch_footprint WHERE "
                                        "batch_id = %s AND status <> 'provisional'",
                                        (BATCH,)).fetchone()
        rec["sources"] = [s for (s,) in conn.execute(
            "SELECT source FROM emission_factor WHERE id = ANY(%s)", (rec["factor_ids"],))]
    return rec


def _qr(image: np.ndarray) -> list[str]:
    rgb = image[:, :, :3]
    if rgb.dtype != np.uint8:
        rgb = (rgb * 255).astype(np.uint8)
    return [r.text for r in zxingcpp.read_barcodes(np.ascontiguousarray(rgb))]


def test_the_page_holds_the_record_and_is_self_contained(written: tuple[str, Path]) -> None:
    dsn, out = written
    rec = _record(dsn)
    page = (out / f"{BATCH}.html").read_text()
    assert f"{rec['kgco2e_location']:.3f}" in page and f"{rec['kgco2e_market']:.3f}" in page
    assert f"{rec['per_unit_location']:.6g}" in page  # per-unit intensity
    assert f"{rec['primary_data_share'] * 100:.2f} %" in page
    assert str(rec["evidence_root"]) in page and str(rec["inputs_sha256"]) in page
    for meter, energy in rec["detail"]["per_meter"].items():  # type: ignore[index]
        assert f"<td>{meter}</td>" in page and f"{energy:.4f}" in page
    assert "residual by mass" in page and "shared by machine_hours" in page
    for source in rec["sources"]:  # type: ignore[union-attr]
        assert str(source).split(" (")[0] in page
    assert page.count("<tr><td>1</td><td>final</td>") == 1  # the revision history
    # nothing to fetch: no external scripts, styles or images
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_the_chart_is_drawn(written: tuple[str, Path]) -> None:
    page = (written[1] / f"{BATCH}.html").read_text()
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert data is not None
    img = mpimg.imread(io.BytesIO(base64.b64decode(data.group(1))))[:, :, :3]
    not_white = (img < 0.95).any(axis=2).mean()
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert not_white > 0.05 and colours > 20  # lines, the shaded window, axes


def test_the_label_qr_carries_the_footprint_id_and_a_root_that_verifies(
        written: tuple[str, Path]) -> None:
    dsn, out = written
    rec = _record(dsn)
    want = (f"urn:plantprint:footprint:demo-site/{BATCH}/{rec['revision']}"
            f"#sha256={rec['evidence_root']}")
    assert _qr(mpimg.imread(out / f"{BATCH}.label.png")) == [want]
    svg = (out / f"{BATCH}.label.svg").read_text()
    assert svg.startswith("<svg") and "kg CO2e / kilogram" in svg
    root = want.rsplit("=", 1)[1]
    v = verify(out / f"{BATCH}.evidence.tar.gz", expect_root=root)
    assert v.confirmed, v.findings


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                             "(deploy/setup-system.sh installs it)")
def test_headless_chromium_renders_the_chart_and_a_readable_qr(
        written: tuple[str, Path], tmp_path: Path) -> None:
    dsn, out = written
    shot = tmp_path / "page.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1100,4200",
                    (out / f"{BATCH}.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = mpimg.imread(shot)[:, :, :3]
    # the chart: a band of the page with many colours (not a blank or broken image)
    rows = [len(np.unique((img[y:y + 200] * 255).astype(np.uint8).reshape(-1, 3), axis=0))
            for y in range(0, img.shape[0] - 200, 100)]
    assert max(rows) > 40
    rec = _record(dsn)
    assert _qr(img) == [f"urn:plantprint:footprint:demo-site/{BATCH}/{rec['revision']}"
                        f"#sha256={rec['evidence_root']}"]
    # and the same page printed to PDF
    pdf = out / f"{BATCH}.pdf"
    assert print_pdf(out / f"{BATCH}.html", pdf) is None
    assert pdf.read_bytes().startswith(b"%PDF-") and pdf.stat().st_size > 20_000
