"""``[mes_folder]``: batch events the MES drops as files into a folder the gateway watches.

Every ``poll_interval_s`` the folder is listed; each ``*.json`` or ``*.csv``
file (``edge.mes_events``), oldest first, is read, validated, signed and
spooled, then moved to ``done/``. A file that does not validate is moved to
``refused/`` with ``<name>.reason`` beside it (the reason code and every bad
event); the other files go on. Names starting with ``.`` or ending in
``.tmp``/``.part`` are not touched: the MES writes under such a name and
renames when the file is complete, so a half-written file is never read.
Polling, not inotify: it works the same on a network share and costs one
listing per interval.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Final

from pydantic import Field

from edge import metrics
from edge.errors import StartError
from edge.mes_events import MesEventError, events_of_csv, events_of_json
from edge.mes_http import Deliver
from edge.settings import Frozen

logger = logging.getLogger(__name__)

SUFFIXES: Final = (".json", ".csv")


class MesFolderConfig(Frozen):
    """``[mes_folder]``: the watched folder (relative: to the config file) and its pace."""

    path: Path
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0


def ready_files(folder: Path) -> list[Path]:
    """Complete event files in ``folder``, oldest first (then by name)."""
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


class DropFolder:
    """An agent input: ``start`` makes the folder and its ``done``/``refused`` subfolders."""

    def __init__(self, config: MesFolderConfig, deliver: Deliver) -> None:
        self.config = config
        self._deliver = deliver
        self.done = config.path / "done"
        self.refused = config.path / "refused"

    @property
    def name(self) -> str:
        return f"folder {self.config.path}"

    async def start(self) -> None:
        try:
            for folder in (self.config.path, self.done, self.refused):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartError("[mes_folder] path", f"{self.config.path}: cannot create the "
                             f"folder and its done/ and refused/ ({exc.strerror or exc})"
                             ) from exc

    async def run(self) -> None:
        while True:
            await self.scan()
            await asyncio.sleep(self.config.poll_interval_s)

    async def close(self) -> None:
        """Nothing held between scans."""

    async def scan(self) -> int:
        """Take every complete file now; the number of events spooled."""
        spooled = 0
        for path in await asyncio.to_thread(ready_files, self.config.path):
            spooled += await self._take(path)
        return spooled

    async def _take(self, path: Path) -> int:
        try:
            data = await asyncio.to_thread(path.read_bytes)
            if path.suffix.lower() == ".csv":
                events = events_of_csv(data.decode("utf-8-sig"))
            else:
                events = events_of_json(data)
        except (MesEventError, UnicodeDecodeError) as exc:
            reason = exc.reason if isinstance(exc, MesEventError) else "malformed_csv"
            metrics.MES_EVENTS_REFUSED.labels(source="folder", reason=reason).inc()
            logger.warning("MES folder: refused %s: %s (moved to %s)", path.name, exc,
                           self.refused)
            await asyncio.to_thread(self._move, path, self.refused, f"{exc}\n")
            return 0
        except OSError as exc:  # vanished or unreadable: tried again next scan
            logger.warning("MES folder: cannot read %s: %s", path, exc)
            return 0
        await self._deliver(events)
        for ev in events:
            metrics.BATCH_EVENTS.labels(source="folder", kind=ev.kind).inc()
        logger.info("MES folder: %s: %s batch events spooled", path.name, len(events))
        await asyncio.to_thread(self._move, path, self.done, None)
        return len(events)

    @staticmethod
    def _move(path: Path, to: Path, reason: str | None) -> None:
        target = to / path.name
        if target.exists():  # a file of the same name was taken before: keep both
            target = to / f"{path.stem}.{path.stat().st_mtime_ns}{path.suffix}"
        path.replace(target)
        if reason is not None:
            target.with_name(target.name + ".reason").write_text(reason, encoding="utf-8")
