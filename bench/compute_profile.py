"""Where a compute micro-batch's time goes: the lag bench's plant fed to a SiteState.

    python -m bench.compute_profile [--copies 66] [--warm-s 50] [--measure-s 10]
                                    [--poll-s 0.1] [--batch-polls 2] [--profile]

No Kafka, no database: the frames of :class:`bench.compute_plant.PlantStream` (the
lag bench's site, the plan at 100x) go through the worker's per-record path
(``accept``, ``group_readings``, ``apply_readings``, ``evaluate``) in micro-batches
of ``--batch-polls`` polls, as the worker sees them at 10k readings/s (it polls
about every 0.15 s of data there). After ``--warm-s`` of data time, the CPU
seconds per micro-batch are printed, and with ``--profile`` the cProfile table
(top entries by own and by cumulative time). The window grows with
``--warm-s``: nothing is final before ``event_delay_s`` (300 s) of data.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from bench.bench_compute_worker import T0, Record, _site_state
from bench.compute_plant import PlantStream, scaled_site
from compute.intake import Accepted, accept, group_readings
from compute.site import load_site
from ingest.screen import Limits


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.compute_profile")
    ap.add_argument("--copies", type=int, default=66, help="copies of the small line")
    ap.add_argument("--warm-s", type=float, default=50.0, help="data seconds before measuring")
    ap.add_argument("--measure-s", type=float, default=10.0, help="data seconds measured")
    ap.add_argument("--poll-s", type=float, default=0.1, help="the gateway's poll interval")
    ap.add_argument("--batch-polls", type=int, default=2, help="polls per micro-batch")
    ap.add_argument("--profile", action="store_true", help="print the cProfile table")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        model = load_site(scaled_site(Path(tmp) / "site.toml", args.copies))
    stream = PlantStream(args.copies, 1, speed=100.0)
    keys = {stream.gateway(0): stream.keys[0].public_key()}
    limits = Limits(now_ns=T0 + 10**18, future_skew_ns=0, earliest_ns=0, commissioning_ns={})
    state, models = _site_state(model), {model.site: model}
    polls = 0

    def micro_batch() -> list[Record]:
        nonlocal polls
        out = []
        for _ in range(args.batch_polls):
            out += [Record(data, 0, polls) for _t, data in
                    stream.poll(T0 + int(polls * args.poll_s * 1e9))]
            polls += 1
        return out

    def step(records: list[Record]) -> None:
        got = [accept(r, keys, 16 << 20, limits) for r in records]
        accepted = [a for a in got if isinstance(a, Accepted)]
        for site_in in group_readings(accepted, models).values():
            for ev in site_in.events:
                state.apply_event(*ev)
            state.note_batch_marks(site_in.batch_marks)
            state.apply_readings(site_in.readings, site_in.states)
        state.evaluate()

    per = args.batch_polls * args.poll_s
    for _ in range(int(args.warm_s / per)):
        step(micro_batch())
    batches = [micro_batch() for _ in range(int(args.measure_s / per))]  # frames made ahead
    prof = cProfile.Profile()
    took = []
    for records in batches:
        t0 = time.process_time()
        if args.profile:
            prof.enable()
        step(records)
        if args.profile:
            prof.disable()
        took.append(time.process_time() - t0)
    window = sum(len(iv) for iv in state.series.values())
    print(f"{len(took)} micro-batches of {args.batch_polls} polls, {window:,} intervals in the "
          f"window: CPU s per micro-batch mean {sum(took) / len(took):.3f}, "
          f"max {max(took):.3f}" + (" (profiled)" if args.profile else ""))
    if args.profile:
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    main()
