"""``python -m compute``: the allocation worker and its operator commands.

    python -m compute --config server.toml                    # the worker (consumer group)
    python -m compute --config server.toml footprints [--batch ID] [--json]
    python -m compute --config server.toml factors list|add ...

A bad config or site model ends with one line naming the file and key, exit 1.
Unknown arguments, and ``footprints``/``factors`` against a database that cannot
answer (unreachable, not migrated), end with one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from compute.errors import ComputeError
from edge.settings import ConfigError
from ingest.config import load_config
from ingest.errors import IngestError

logger = logging.getLogger("compute")


def _args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog="python -m compute", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="server.toml")
    ap.add_argument("--verbose", action="store_true", help="third-party library logs too")
    sub = ap.add_subparsers(dest="command")
    fp = sub.add_parser("footprints", help="print batch footprints")
    fp.add_argument("--batch", help="one batch id (every revision)")
    fp.add_argument("--json", action="store_true", help="JSON instead of a table")
    sub.add_parser("factors", help="list or add emission factors", add_help=False)
    return ap.parse_known_args(argv)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("kafka", "numba"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args, rest = _args(argv)
    _logging(args.verbose)
    try:
        cfg = load_config(args.config)
        if args.command == "factors":
            from compute.factors_cli import factors_main
            return int(factors_main(rest, cfg.database.dsn.get_secret_value()))
        if rest:  # the factors subcommand parses its own; nothing else takes more
            print(f"compute: unknown arguments {' '.join(rest)}", file=sys.stderr)
            return 2
        if args.command == "footprints":
            from compute.report import print_footprints
            return print_footprints(cfg.database.dsn.get_secret_value(), args.batch, args.json)
        from compute.site import load_sites
        from compute.worker import run_worker
        if not cfg.compute.sites:
            raise ComputeError(f"{args.config}: [compute] sites: no site model configured "
                               '(e.g. sites = { "demo-site" = "sites/small.toml" })')
        run_worker(cfg, load_sites(cfg.compute.sites, args.config.parent))
        return 0
    except (ConfigError, ComputeError, IngestError) as exc:
        print(f"compute: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
