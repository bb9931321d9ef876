"""The certificate as PDF, printed by headless Chromium (Debian's ``chromium`` package).

No Python library renders this HTML to PDF without system libraries: WeasyPrint
needs Pango and its kin, xhtml2pdf and fpdf2 handle neither the inline SVG
label nor the page's CSS faithfully. Chromium, which the certificate is tested
in anyway, prints exactly what a browser shows. Without it, no PDF is written
and the reason is returned.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

TIMEOUT_S = 120.0


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def print_pdf(page: Path, pdf: Path) -> str | None:
    """Print ``page`` to ``pdf``; None when written, else why not."""
    exe = chromium()
    if exe is None:
        return "no PDF: Chromium is not installed (Debian package chromium)"
    # --no-sandbox: Chromium refuses to start its sandbox as root (containers, CI)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
           f"--print-to-pdf={pdf}", page.resolve().as_uri()]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        return f"no PDF: Chromium did not finish within {TIMEOUT_S:.0f} s"
    if done.returncode != 0 or not pdf.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no PDF: Chromium exited {done.returncode} ({tail})"
    return None
