"""Evidence bundles of the small plant's final footprints: written, recorded, verified.

verify recomputes each footprint from the bundle alone and must confirm it to
the last bit (and its inputs SHA-256); a bundle with one reading, one factor or
one site-model setting altered, or one reading dropped, is refused with that
reading, factor or setting named. The bundles are written against a copy of
the small plant's database (``bundle`` records the root hash there).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest

from compute.__main__ import main as compute_main
from compute.evidence.bundle import read_members
from compute.evidence.content import canonical
from compute.evidence.manifest import build, manifest_bytes, root_of
from compute.evidence.verify import verify
from deploy import devstack

ROOT = Path(__file__).resolve().parents[2]
SITE_FILE = ROOT / "deploy" / "sites" / "small.toml"


def copy_database(admin_dsn: str, template: str) -> str:
    """A new database copied from ``template`` (retried while another session reads it)."""
    name = f"pp_test_{uuid.uuid4().hex[:12]}"
    for attempt in range(20):
        try:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return name
        except psycopg.errors.ObjectInUse:
            time.sleep(0.5 * (attempt + 1))
    pytest.fail(f"could not copy {template}: another session keeps it open", pytrace=False)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_toml(folder: Path, dsn: str, site_file: Path = SITE_FILE) -> Path:
    path = folder / "server.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\n[compute]\n'
                    f'sites = {{ "demo-site" = "{site_file.as_posix()}" }}\n')
    return path


@pytest.fixture(scope="module")
def plant_copy(small_plant, services) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A writable copy of the small plant's database (DSN)."""
    name = copy_database(services.pg_admin_dsn, small_plant.database)
    yield devstack.with_dbname(services.pg_admin_dsn, name)
    drop_database(services.pg_admin_dsn, name)


@pytest.fixture(scope="module")
def bundles(plant_copy: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bundle per final batch, written by the command line."""
    folder = tmp_path_factory.mktemp("bundles")
    config = server_toml(folder, plant_copy)
    with psycopg.connect(plant_copy) as conn:
        batches = [str(r[0]) for r in conn.execute(
            "SELECT batch_id FROM batch_footprint_latest WHERE status <> 'provisional' "
            "ORDER BY batch_id")]
    assert batches, "the small plant has final footprints"
    out = {}
    for b in batches:
        path = folder / f"{b}.tar.gz"
        assert compute_main(["--config", str(config), "bundle", "--batch", b,
                             "--out", str(path)]) == 0
        out[b] = path
    return out


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


def test_every_final_footprint_is_confirmed_to_the_last_digit(
        bundles: dict[str, Path], plant_copy: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(plant_copy) as conn:
        recorded = {str(b): (str(r), float(kg), str(h)) for b, r, kg, h in conn.execute(
            "SELECT batch_id, evidence_root, kgco2e_location, inputs_sha256 "
            "FROM batch_footprint_evidence WHERE status <> 'provisional'")}
    assert set(recorded) == set(bundles)
    for batch, path in bundles.items():
        v = verify(path, expect_root=recorded[batch][0])
        assert v.confirmed, (batch, v.findings)
        assert v.root == recorded[batch][0]  # the footprint record carries the bundle's root
        assert v.footprint["kgco2e_location"] == recorded[batch][1]
        assert v.footprint["inputs_sha256"] == recorded[batch][2]
        capsys.readouterr()
        assert compute_main(["verify", str(path), "--root", v.root]) == 0
        said = capsys.readouterr().out
        assert said.startswith(f"confirmed: batch {batch} revision 1 of site demo-site")
        assert repr(recorded[batch][1]) in said


def test_a_bundle_is_deterministic(bundles: dict[str, Path], plant_copy: str,
                                   tmp_path: Path) -> None:
    batch, first = next(iter(bundles.items()))
    again = tmp_path / "again.tar.gz"
    config = server_toml(tmp_path, plant_copy)
    assert compute_main(["--config", str(config), "bundle", "--batch", batch,
                         "--out", str(again)]) == 0
    assert again.read_bytes() == first.read_bytes()
    with psycopg.connect(plant_copy) as conn:  # the same root is recorded once
        n = conn.execute("SELECT count(*) FROM batch_evidence WHERE batch_id = %s",
                         (batch,)).fetchone()
    assert n == (1,)


# --- tampering --------------------------------------------------------------


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None],
            reseal: bool = False) -> None:
    """``src`` with its members edited; ``reseal`` also rewrites the manifest to match (what
    a forger would do): only the root hash then shows it."""
    members = read_members(src)
    edit(members)
    if reseal:
        from compute.evidence.content import Evidence
        rest = {k: v for k, v in members.items() if k != "manifest.json"}
        members["manifest.json"] = manifest_bytes(build(Evidence.from_members(rest), rest))
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dst.write_bytes(raw.getvalue())


def _lines(data: bytes) -> list[list[object]]:
    return [orjson.loads(x) for x in data.splitlines()]


def _join(rows: list[list[object]]) -> bytes:
    return b"".join(canonical(r) + b"\n" for r in rows)


def _oven_reading(members: dict[str, bytes]) -> int:
    """Index of an M-OVEN counter reading in the middle of the batch."""
    fp = orjson.loads(members["footprint.json"])
    mid = (fp["start_ns"] + fp["end_ns"]) // 2
    rows = _lines(members["readings.jsonl"])
    return min((i for i, r in enumerate(rows) if r[0] == "M-OVEN" and r[1] == "energy"),
               key=lambda i: abs(int(rows[i][2]) - mid))  # type: ignore[call-overload]


@pytest.mark.parametrize("reseal", [False, True], ids=["manifest-kept", "manifest-forged"])
def test_an_altered_reading_is_named(bundles: dict[str, Path], tmp_path: Path,
                                     reseal: bool) -> None:
    src = next(iter(bundles.values()))
    original = root_of(read_members(src)["manifest.json"])
    named: list[str] = []

    def edit(m: dict[str, bytes]) -> None:
        rows = _lines(m["readings.jsonl"])
        k = _oven_reading(m)
        rows[k][3] = float(rows[k][3]) + 0.5  # type: ignore[arg-type]  # +0.5 kWh
        named.append(f"reading M-OVEN/energy at {_iso(int(rows[k][2]))}")  # type: ignore[call-overload]
        m["readings.jsonl"] = _join(rows)

    rewrite(src, tmp_path / "t.tar.gz", edit, reseal)
    v = verify(tmp_path / "t.tar.gz", expect_root=original)
    assert not v.confirmed
    assert v.findings[0].startswith(named[0]), v.findings
    assert any("footprint energy" in f for f in v.findings)
    # a forged manifest hides the edit from the member hashes, not from the root
    assert any(f.startswith("root hash") for f in v.findings) == reseal


def test_a_dropped_reading_is_named(bundles: dict[str, Path], tmp_path: Path) -> None:
    named: list[str] = []

    def edit(m: dict[str, bytes]) -> None:
        rows = _lines(m["readings.jsonl"])
        k = _oven_reading(m)
        named.append(f"reading M-OVEN/energy at {_iso(int(rows[k][2]))}: missing")  # type: ignore[call-overload]
        del rows[k]
        m["readings.jsonl"] = _join(rows)

    rewrite(next(iter(bundles.values())), tmp_path / "t.tar.gz", edit)
    v = verify(tmp_path / "t.tar.gz")
    assert v.findings[0].startswith(named[0]), v.findings


def test_an_altered_factor_is_named(bundles: dict[str, Path], tmp_path: Path) -> None:
    src = next(iter(bundles.values()))
    fp = orjson.loads(read_members(src)["footprint.json"])
    used = fp["factor_ids"][0]

    def edit(m: dict[str, bytes]) -> None:
        rows = _lines(m["factors.jsonl"])
        row = next(r for r in rows if r[0] == used)
        row[5] = float(row[5]) * 1.1  # type: ignore[arg-type]
        m["factors.jsonl"] = _join(rows)

    rewrite(src, tmp_path / "t.tar.gz", edit)
    v = verify(tmp_path / "t.tar.gz")
    assert v.findings[0].startswith(f"factor {used} ("), v.findings
    assert any(f.startswith("footprint kgco2e_") for f in v.findings)


def test_an_altered_site_model_setting_is_named(bundles: dict[str, Path],
                                                tmp_path: Path) -> None:
    def edit(m: dict[str, bytes]) -> None:
        model = orjson.loads(m["site_model.json"])
        model["meters"]["M-INC"]["rule"] = "equal"  # the residual's rule: mass → equal
        m["site_model.json"] = orjson.dumps(model) + b"\n"

    rewrite(next(iter(bundles.values())), tmp_path / "t.tar.gz", edit)
    v = verify(tmp_path / "t.tar.gz")
    assert v.findings[0] == "setting site.meters.M-INC.rule: differs from the manifest", \
        v.findings
    assert any(f.startswith("footprint ") for f in v.findings)  # and the number moved


def test_a_damaged_archive_is_refused(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a bundle")
    assert compute_main(["verify", str(bad)]) == 2
    assert "not a readable bundle archive" in capsys.readouterr().err
