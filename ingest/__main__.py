"""``python -m ingest``: the consumer, and the ``migrate``, ``refresh`` and ``bridge`` commands.

    python -m ingest --config server.toml             # Kafka → database consumer
    python -m ingest migrate [--dsn DSN | --config server.toml]
    python -m ingest refresh [--dsn DSN | --config server.toml]
    python -m ingest bridge --config server.toml      # MQTT → Kafka bridge
    python -m ingest dlq list|redrive --config server.toml ...    # ingest.ops_dlq_cli
    python -m ingest ledger reset --config server.toml ...        # ingest.ops_ledger
    python -m ingest archive verify --config server.toml ...      # ingest.archive

``migrate`` and ``refresh`` take the owner's DSN (``--dsn`` or ``PLANTPRINT_DSN``
or the config's); the consumer and the bridge never need more than
``plantprint_writer``. Both refuse to start (exit 2) unless the config's database
holds exactly the migrations packaged with this release (``ingest.schema_check``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from edge.logs import INGEST_LIBRARIES, configure_logging
from ingest.config import ServerConfig, load_config
from ingest.errors import IngestError

logger = logging.getLogger("ingest")


# operator commands with their own sub-commands and options (``python -m ingest dlq -h``)
OPERATOR_COMMANDS = ("dlq", "ledger", "archive")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ingest", description=__doc__.splitlines()[0],
        epilog="operator commands: python -m ingest dlq list|redrive ..., "
               "python -m ingest ledger reset ... (each with -h)")
    p.add_argument(
        "command", nargs="?", default="run", choices=("run", "migrate", "refresh", "bridge")
    )
    p.add_argument("--config", type=Path, help="server TOML (see deploy/server/server.toml)")
    p.add_argument("--dsn", help="database DSN for migrate/refresh (overrides config)")
    p.add_argument("--log-level", default=os.environ.get("PLANTPRINT_LOG", "INFO"))
    p.add_argument("--verbose", action="store_true",
                   help="also log kafka-python's connection lines (off by default)")
    return p


def _dsn(args: argparse.Namespace, cfg: ServerConfig | None) -> str:
    if args.dsn:
        return str(args.dsn)
    if os.environ.get("PLANTPRINT_DSN"):
        return os.environ["PLANTPRINT_DSN"]
    if cfg is not None:
        return cfg.database.dsn.get_secret_value()
    raise IngestError("no database: pass --dsn, --config or set PLANTPRINT_DSN")


def _run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config) if args.config else None
    if args.command in ("migrate", "refresh"):
        from ingest.maintenance import apply_timescale_policies, refresh_aggregates
        from ingest.migrate import migrate

        mode = cfg.database.timescaledb if cfg else "auto"
        dsn = _dsn(args, cfg)
        if args.command == "refresh":
            refresh_aggregates(dsn, mode)
            return
        migrate(dsn, mode)
        if cfg is not None:
            from ingest.db import connect
            from ingest.migrate import detect_backend

            with connect(dsn) as conn:
                if detect_backend(conn, mode) == "timescaledb":
                    apply_timescale_policies(conn, cfg.storage)
        return
    if cfg is None:
        raise IngestError(f"{args.command} needs --config")
    if not _schema_matches(cfg):
        return
    if args.command == "bridge":
        from ingest.bridge import run_bridge

        run_bridge(cfg)
    else:
        from ingest.consumer import run_consumer

        run_consumer(cfg)


def _schema_matches(cfg: ServerConfig) -> bool:
    """The consumer and the bridge start only on a database migrated by this release
    (SchemaMismatch otherwise); False when stopped while waiting for the database."""
    from ingest.schema_check import check_schema

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the services install their own next
        signal.signal(sig, lambda *_: stop.set())
    db = cfg.database
    return check_schema(db.dsn.get_secret_value(), stop=stop,
                        connect_timeout_s=db.connect_timeout_s, reconnect_max_s=db.reconnect_max_s)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in OPERATOR_COMMANDS:
        return _operator_command(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, verbose=args.verbose, libraries=INGEST_LIBRARIES)
    try:
        _run(args)
    except IngestError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def _operator_command(command: str, argv: list[str]) -> int:
    configure_logging(os.environ.get("PLANTPRINT_LOG", "WARNING"), verbose=False,
                      libraries=INGEST_LIBRARIES)
    if command == "dlq":
        from ingest.ops_dlq_cli import main as dlq_main

        return dlq_main(argv)
    if command == "archive":
        from ingest.archive import main as archive_main

        return archive_main(argv)
    from ingest.ops_ledger import main as ledger_main

    return ledger_main(argv)


if __name__ == "__main__":
    sys.exit(main())
