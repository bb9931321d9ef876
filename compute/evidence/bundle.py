"""``python -m compute bundle --batch ID``: one deterministic archive per batch, recorded.

The archive is a gzip-compressed tar whose members are in a fixed order
(``manifest.json`` first, then by name) with zeroed times, owners and modes,
and a gzip header without time or name: the same evidence gives the same
bytes. Its root hash goes into ``batch_evidence`` (migration 0011) with the
footprint revision it certifies; ``batch_footprint_evidence`` shows it beside
the newest revision.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import psycopg

from compute.evidence.collect import collect, find_sites
from compute.evidence.content import MANIFEST, BundleError, Evidence
from compute.evidence.manifest import build, manifest_bytes, root_of
from compute.site import SiteModel

Conn = psycopg.Connection[tuple[object, ...]]
MAX_MEMBER_BYTES = 2**31  # refuse to read a member larger than this from a bundle


def archive_bytes(ev: Evidence) -> tuple[bytes, str, dict[str, object]]:
    """(archive, root hash, manifest) of ``ev``."""
    members = ev.to_members()
    manifest = build(ev, members)
    mdata = manifest_bytes(manifest)
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [(MANIFEST, mdata), *sorted(members.items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue(), root_of(mdata), manifest


def read_members(path: Path) -> dict[str, bytes]:
    """Every regular member of a bundle archive by name."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            out = {}
            for info in tar.getmembers():
                if not info.isfile() or info.size > MAX_MEMBER_BYTES:
                    raise BundleError(f"{path}: member {info.name} is not a bundle file")
                f = tar.extractfile(info)
                assert f is not None  # a regular file always has a body
                out[info.name] = f.read()
            return out
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{path}: not a readable bundle archive ({exc})") from exc


_RECORD = """INSERT INTO batch_evidence (site, batch_id, revision, root_sha256,
    readings_merkle_root, readings, inputs_sha256)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"""


def write_bundle(conn: Conn, models: dict[str, SiteModel], gap_s: float, batch_id: str,
                 out: Path | None, site: str | None = None) -> tuple[Path, str]:
    """Collect, write and record the bundle of ``batch_id``; (path, root hash)."""
    sites = [site] if site else find_sites(conn, batch_id)
    if not sites:
        raise BundleError(f"no footprint of batch {batch_id} in the database")
    if len(sites) > 1:
        raise BundleError(f"batch {batch_id} exists at sites {', '.join(sites)}: name one "
                          "with --site")
    model = models.get(sites[0])
    if model is None:
        raise BundleError(f"batch {batch_id} is of site {sites[0]}, which has no site model "
                          "in [compute] sites")
    with conn.transaction():
        ev = collect(conn, model, gap_s, batch_id)
    data, root, manifest = archive_bytes(ev)
    path = out or Path(f"{batch_id}.evidence.tar.gz")
    path.write_bytes(data)
    fp = ev.documents["footprint.json"]
    readings = manifest["readings"]
    assert isinstance(readings, dict)
    with conn.transaction():
        conn.execute(_RECORD, (fp["site"], batch_id, fp["revision"], root,
                               readings["merkle_root"], readings["count"], fp["inputs_sha256"]))
    return path, root
