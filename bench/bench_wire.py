"""Frame encode and decode cost per reading (issue: decode ≤ 1 µs/reading at 1,000).

Baseline: orjson alone parsing (or serialising) the same body bytes in the same
run, so the ratio shows what validation and the signature add to bare JSON.
"""

from __future__ import annotations

from functools import partial

import orjson

from bench.harness import BenchContext, Figure, best_seconds
from edge import wire

BASE_TS = 1_764_000_000_000_000_000  # ns, 2025-11-24


def _frame(n: int) -> wire.Frame:
    rows = [
        wire.Reading(f"EM-{i % 40:03d}", "energy_active_import", BASE_TS + i * 1_000_000,
                     123_456.789 + i, "kWh", "good")
        for i in range(n)
    ]
    return wire.Frame.from_readings("site-1", "gw-1", 42, BASE_TS, rows)


def run(ctx: BenchContext) -> list[Figure]:
    key = wire.generate_private_key()
    keys = {"gw-1": key.public_key()}
    figures: list[Figure] = []
    repeat = 3 if ctx.quick else 7
    for n in (1, 100, 1000):
        frame = _frame(n)
        data = wire.encode(frame, key)
        body = bytes(wire.signed_body(data))
        obj = orjson.loads(body)
        number = max(1, 20_000 // n) if not ctx.quick else max(1, 2_000 // n)
        dec = best_seconds(partial(wire.decode, data, keys), repeat, number) / n * 1e6
        base_dec = best_seconds(partial(orjson.loads, body), repeat, number) / n * 1e6
        enc = best_seconds(partial(wire.encode, frame, key), repeat, number) / n * 1e6
        base_enc = best_seconds(
            partial(orjson.dumps, obj, option=orjson.OPT_SORT_KEYS), repeat, number
        ) / n * 1e6
        goal = "≤ 1 µs/reading" if n == 1000 else ""
        figures.append(Figure(
            "wire", f"decode+verify, {n}-reading frame", dec, "µs/reading",
            "orjson.loads same body", base_dec, goal, "lower",
            met=(dec <= 1.0) if n == 1000 else None,
        ))
        figures.append(Figure(
            "wire", f"encode+sign, {n}-reading frame", enc, "µs/reading",
            "orjson.dumps same body", base_enc, "", "lower",
        ))
    return figures
