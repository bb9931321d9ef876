"""Run every bench module and print one table; write bench-out/bench.json.

    python -m bench [--quick] [--only wire,edge]
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

import orjson

from bench.harness import BenchContext, Figure


def _modules(only: set[str] | None) -> list[str]:
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    if only:
        names = [n for n in names if n.removeprefix("bench_") in only]
    return names


def _print_table(figures: list[Figure]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plantprint bench (ratios against a baseline measured in the same run)")
    for col in ("area", "figure", "value", "unit", "baseline", "ratio", "goal", "met"):
        table.add_column(col)
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "NO")
        table.add_row(
            f.area, f.name, f"{f.value:,.3f}", f.unit,
            f"{f.baseline_name} = {f.baseline_value:,.3f}", f"{f.ratio:,.3f}", f.goal, met,
        )
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only", default="", help="comma-separated module names without bench_")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(quick=args.quick, scratch=args.out)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    figures: list[Figure] = []
    failed: list[str] = []
    for name in _modules(only):
        try:
            mod = importlib.import_module(f"bench.{name}")
            figures.extend(mod.run(ctx))
        except Exception:  # one broken bench must not hide the others' figures
            failed.append(name)
            traceback.print_exc()
    _print_table(figures)
    payload = {"figures": [f.as_json() for f in figures], "failed": failed}
    (Path(args.out) / "bench.json").write_bytes(
        orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    if failed:
        print(f"bench modules that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
