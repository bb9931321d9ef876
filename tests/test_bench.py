"""`make bench` keeps running: every bench module produces its figures (quick sizes).

Speed is judged by the bench table itself, never here: this only proves the
harness and each module still run and report every figure the issues name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_reports_every_area(tmp_path: Path, services) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = orjson.loads((tmp_path / "bench.json").read_bytes())
    assert report["failed"] == []
    names = {(f["area"], f["name"]) for f in report["figures"]}
    assert {area for area, _ in names} == {"wire", "edge", "ingest", "simulators", "compute"}
    for figure in report["figures"]:
        assert figure["value"] > 0 and figure["baseline_value"] > 0, figure
    compute = [name for area, name in names if area == "compute"]
    # issue 9's figures: the kernels against pandas and bandwidth, the worker's readings
    # per core, its lag p50 and p99, its cold start
    for part in ("pandas", "bandwidth", "readings per CPU-second", "lag p50", "lag p99",
                 "cold start"):
        assert any(part in name for name in compute), (part, compute)
