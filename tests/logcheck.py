"""What a long-running process's log may not hold: a traceback of our own.

kafka-python 3 logs a traceback of its own when a socket it is reading is
closed under it (``kafka.net.transport``: "Error receiving network data
closing socket", seen once in CI as an ingest stopped): the library recovers,
the process is fine. A test that a process never crashed or logged an
unexpected exception looks at every other record.
"""

from __future__ import annotations

import re

# edge.logs.FORMAT: "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ (\S+): ", re.MULTILINE)
_LIBRARY_NOISE = ("kafka.",)  # loggers whose own tracebacks are not ours


def our_tracebacks(log: str) -> list[str]:
    """The log records (and any text before the first) that carry a traceback, except
    those of the libraries' own loggers named in ``_LIBRARY_NOISE``."""
    found = list(_RECORD.finditer(log))
    out = []
    head = log[:found[0].start()] if found else log
    if "Traceback" in head:
        out.append(head)
    for k, m in enumerate(found):
        end = found[k + 1].start() if k + 1 < len(found) else len(log)
        record = log[m.start():end]
        if "Traceback" in record and not m.group(1).startswith(_LIBRARY_NOISE):
            out.append(record)
    return out

