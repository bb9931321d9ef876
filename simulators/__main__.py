"""``python -m simulators --scenario deploy/scenarios/small.toml [--speed 60] ...``"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import orjson

from simulators.config import load_scenario
from simulators.errors import SimulatorError
from simulators.runner import PlantRunner, RunOptions

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m simulators", description=__doc__)
    ap.add_argument("--scenario", required=True, type=Path, help="scenario TOML file")
    ap.add_argument("--speed", type=float, default=1.0,
                    help="simulated seconds per real second (0: as fast as possible)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ground-truth", type=Path, default=None, help="JSON Lines output")
    ap.add_argument("--duration-s", type=int, default=None,
                    help="stop after this many simulated seconds")
    ap.add_argument("--port-base", type=int, default=None,
                    help="Modbus port base (0: free ports); default from the scenario")
    ap.add_argument("--opcua-port", type=int, default=None,
                    help="OPC UA port (0: a free port); default from the scenario")
    ap.add_argument("--no-opcua", action="store_true", help="do not start the OPC UA server")
    ap.add_argument("--endpoints", type=Path, default=None,
                    help="write the bound endpoints as JSON here once listening")
    ap.add_argument("--hold-s", type=float, default=0.0,
                    help="real seconds the plant holds at t = 0 after the servers listen "
                         "(the endpoints file is written at once, its clock in the future)")
    ap.add_argument("--log-level", default="WARNING")
    return ap.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    scenario = load_scenario(args.scenario)
    options = RunOptions(speed=args.speed, seed=args.seed, duration_s=args.duration_s,
                         ground_truth=args.ground_truth, endpoints=args.endpoints,
                         port_base=args.port_base, opcua_port=args.opcua_port,
                         opcua=not args.no_opcua, hold_s=args.hold_s)
    if options.speed < 0:
        raise SimulatorError(f"--speed: expected >= 0, got {options.speed}")
    runner = PlantRunner(scenario, options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.stop)
    async with runner:
        runner.begin_pacing()  # simulated t = 0 is now: the endpoints carry the clock
        print(orjson.dumps(runner.endpoints()).decode(), flush=True)
        await runner.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncua warns that a NoSecurity endpoint has no signing policy: intended here
    logging.getLogger("asyncua").setLevel(max(logging.ERROR, logging.root.level))
    try:
        asyncio.run(_serve(args))
    except SimulatorError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
