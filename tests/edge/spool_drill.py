"""Child process for the SIGKILL drills: appends frames until it is killed.

``python -m tests.edge.spool_drill SPOOL_PATH GATEWAY`` appends readings frames
forever and prints each sequence number once ``append`` returned (the frame is
then promised durable); the parent kills it with SIGKILL at a random moment.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge.spool import Spool, SpoolConfig


def main() -> None:
    path, gateway = Path(sys.argv[1]), sys.argv[2]
    with Spool(SpoolConfig(path=path), gateway) as spool:
        while True:
            seq = spool.append("readings", lambda s: b"frame-%d" % s)
            sys.stdout.write(f"{seq}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
