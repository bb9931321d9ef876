"""``python -m edge --config site.toml [--check | --init-key]`` (script ``plantprint-edge``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from edge import wire
from edge.config import AgentConfig, ConfigError, load_config
from edge.errors import AgentError, StartError
from edge.logs import EDGE_LIBRARIES, configure_logging

logger = logging.getLogger("edge")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m edge", description="plantprint edge agent")
    ap.add_argument("--config", required=True, type=Path, help="site config (TOML)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="read every configured point once, print a table, exit 1 if any failed")
    mode.add_argument("--init-key", action="store_true",
                      help="write a new Ed25519 signing key to signing_key (never overwrites) "
                           "and print its public key for the server's gateway list")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--verbose", action="store_true",
                    help="also log what asyncua, kafka-python and pymodbus say (off by default)")
    return ap.parse_args(argv)


def init_key(config: AgentConfig) -> int:
    path = config.signing_key
    if path.exists():
        print(f"{path}: exists, not overwritten", file=sys.stderr)
        try:
            key = wire.load_private_key(path)
        except ValueError as exc:  # the message names the file
            hint = "" if "chmod" in str(exc) else "; move the file away to create a new key"
            print(f"key error: {exc}{hint}", file=sys.stderr)
            return 2
    else:  # owner-only file, in a 0700 folder when the folder is new (the agent refuses others)
        key = wire.generate_private_key()
        wire.write_private_key(path, key)
    print(f"{config.gateway} {wire.public_key_b64(key)}")
    return 0


async def run_agent(config: AgentConfig) -> None:
    from edge.agent import Agent

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Agent(config) as agent:
        waiter = asyncio.create_task(agent.wait())
        stopper = asyncio.create_task(stop.wait())
        done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if waiter in done:
            waiter.result()  # re-raise a loop failure
        logger.info("gateway %s: stopping", config.gateway)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, verbose=args.verbose, libraries=EDGE_LIBRARIES)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.init_key:
        return init_key(config)
    if args.check:
        from edge.check import check

        return check(config)
    try:
        asyncio.run(run_agent(config))
    except StartError as exc:  # one line naming the key, for whoever started the agent
        print(f"edge: {exc}", file=sys.stderr)
        return 1
    except AgentError as exc:  # a loop died while running: logged like everything else
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
