"""``python -m compute``: the allocation worker and its operator commands.

    python -m compute --config server.toml                    # the worker (consumer group)
    python -m compute --config server.toml footprints [--batch ID] [--json]
    python -m compute --config server.toml factors list|add ...
    python -m compute --config server.toml export pact (--batch ID | --product SKU --from D --to D)
    python -m compute --config server.toml serve               # the PACT v3 API
    python -m compute --config server.toml bundle --batch ID [--out FILE]
    python -m compute verify BUNDLE [--root HEX]
    python -m compute --config server.toml certificate --batch ID [--out DIR]
    python -m compute --config server.toml cbam --product SKU --from DATE --to DATE

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
    sub.add_parser("export", help="export pact: PACT v3 footprint JSON", add_help=False)
    sub.add_parser("serve", help="the PACT v3 REST API, read-only")
    sub.add_parser("pact-secret", help="hash a PACT API client secret read from stdin")
    sub.add_parser("bundle", help="write a batch's evidence bundle", add_help=False)
    sub.add_parser("certificate", help="write a batch's certificate and label", add_help=False)
    sub.add_parser("cbam", help="CBAM figures of a product over a period", add_help=False)
    return ap.parse_known_args(argv)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("kafka", "numba"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:  # a verifier has the bundle, not our server.toml
        from compute.evidence.cli import verify_cli
        return verify_cli(argv[1:])
    args, rest = _args(argv)
    _logging(args.verbose)
    try:
        cfg = load_config(args.config)
        if args.command == "factors":
            from compute.factors_cli import factors_main
            return int(factors_main(rest, cfg.database.dsn.get_secret_value()))
        if args.command == "export":
            from compute.pact.export import export_main
            return export_main(rest, cfg, args.config)
        if args.command == "bundle":
            from compute.evidence.cli import bundle_main
            return bundle_main(rest, cfg, args.config)
        if args.command == "certificate":
            from compute.certificate.cli import certificate_main
            return certificate_main(rest, cfg, args.config)
        if args.command == "cbam":
            from compute.cbam import cbam_main
            return cbam_main(rest, cfg, args.config)
        if rest:  # the factors subcommand parses its own; nothing else takes more
            print(f"compute: unknown arguments {' '.join(rest)}", file=sys.stderr)
            return 2
        if args.command == "serve":
            from compute.pact.serve import serve_main
            return serve_main(cfg, args.config)
        if args.command == "pact-secret":
            from compute.pact.auth import hash_secret
            print(hash_secret(sys.stdin.readline().rstrip("\n")))
            return 0
        if args.command == "footprints":
            from compute.report import print_footprints
            return print_footprints(cfg.database.dsn.get_secret_value(), args.batch, args.json)
        from compute.site import load_sites
        if not cfg.compute.sites:
            raise ComputeError(f"{args.config}: [compute] sites: no site model configured "
                               '(e.g. sites = { "demo-site" = "sites/small.toml" })')
        models = load_sites(cfg.compute.sites, args.config.parent)
        from compute.kernels_warm import warm_kernels
        from compute.worker import run_worker
        # the kernels load while the worker checks the database and joins its group (it
        # waits on the network); not while it imports, which needs the interpreter too
        warm_kernels()
        run_worker(cfg, models)
        return 0
    except (ConfigError, ComputeError, IngestError) as exc:
        print(f"compute: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
