"""compute's transaction: what it used, derived and concluded, with its Kafka offsets.

One call of :meth:`ComputeStore.commit` is one PostgreSQL transaction holding
the frames taken into account (``compute_frame``), new intervals, batches,
machine-state changes, settled allocations, footprint revisions, the carried
meter and site state, and the next offsets per partition (``consumer_offset``
under compute's group). So a crash at any point neither loses nor doubles a
number: on assignment the worker restores the state and seeks to the offsets
stored here (:meth:`ComputeStore.restore`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import psycopg

from compute import kernels
from compute.footprint import Footprint
from compute.model import F64, I64, Batch, Intervals, StateChanges, f64, i64
from compute.series import MeterCarry
from compute.site import CANONICAL_UNIT
from compute.site_state import Outcome, SiteState, Stored
from ingest.db import connect
from ingest.store import TopicPartition, read_offsets, save_offsets

logger = logging.getLogger(__name__)

_TS = "'epoch'::timestamptz + (%s / 1000) * interval '1 microsecond'"


def ts_sql(col: str) -> str:
    return f"'epoch'::timestamptz + ({col} / 1000) * interval '1 microsecond'"


def ns_sql(col: str) -> str:
    """A timestamptz column as epoch ns (bigint)."""
    return f"(extract(epoch from {col}) * 1000000)::bigint * 1000"


@dataclass(frozen=True)
class FrameKey:
    gateway: str
    stream: str
    seq: int
    site: str
    digest: bytes
    partition: int
    offset: int


_FRAMES = """INSERT INTO compute_frame (gateway, stream, seq, site, body_sha256,
                           kafka_partition, kafka_offset)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::bytea[],
                     %s::int[], %s::bigint[])
ON CONFLICT DO NOTHING RETURNING gateway, stream, seq"""
# a frame whose signed body a `ledger reset` retired (migration 0010) is a replay: ingest
# dead-letters it as `replayed`, compute must not use it under the new epoch's numbers
_RETIRED = """SELECT DISTINCT body_sha256 FROM retired_frame WHERE body_sha256 = ANY(%s::bytea[])"""
_SEEN = """SELECT gateway, stream, seq, body_sha256 FROM compute_frame
JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS k(gateway, stream, seq)
USING (gateway, stream, seq)"""
# numbers travel as one array literal per column (``_literal``) and names as an index into a
# short list: psycopg adapts a Python list element by element, which cost more than the
# allocation itself on a site of hundreds of meters
_INTERVALS = f"""INSERT INTO energy_interval (site, meter, carrier, start_ts, end_ts, energy,
    estimated, flags, power_start, power_end, co2)
SELECT %s, (%s::text[])[k], (%s::text[])[k], {ts_sql('s')}, {ts_sql('e')}, energy, est, flags,
       nullif(ps, 'NaN'), nullif(pe, 'NaN'), nullif(co2, 'NaN')
FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::float8[], %s::float8[], %s::int[],
            %s::float8[], %s::float8[], %s::float8[])
     AS t(k, s, e, energy, est, flags, ps, pe, co2)
ON CONFLICT DO NOTHING"""
_BATCH = f"""INSERT INTO compute_batch (site, batch_id, asset, product, start_ts, end_ts,
    quantity, unit, updated_at)
VALUES (%s, %s, %s, %s, {ts_sql('%s')}, {ts_sql('%s::bigint')}, %s, %s, now())
ON CONFLICT (site, batch_id) DO UPDATE SET asset = EXCLUDED.asset, product = EXCLUDED.product,
    start_ts = EXCLUDED.start_ts, end_ts = EXCLUDED.end_ts, quantity = EXCLUDED.quantity,
    unit = EXCLUDED.unit, updated_at = now()"""
_STATES = f"""INSERT INTO compute_state_change (site, asset, ts, code)
SELECT %s, asset, {ts_sql('t')}, code FROM unnest(%s::text[], %s::bigint[], %s::int[])
    AS x(asset, t, code)
ON CONFLICT DO NOTHING"""
_ALLOC = f"""INSERT INTO allocation (site, meter, end_ts, batch_id, energy, rule)
SELECT %s, (%s::text[])[m], {ts_sql('e')}, (%s::text[])[b], energy, (%s::text[])[r]
FROM unnest(%s::int[], %s::bigint[], %s::int[], %s::float8[], %s::int[])
    AS x(m, e, b, energy, r)
ON CONFLICT DO NOTHING"""
_FOOTPRINT_COLS = """site, batch_id, revision, status, asset, product, start_ts, end_ts,
    quantity, unit, declared_units, energy, energy_unit, uncertainty, kgco2e_location,
    kgco2e_market, kgco2e_uncertainty, per_unit_location, per_unit_market,
    primary_data_share, flags, factor_ids, detail, inputs_sha256"""
_FOOTPRINT = f"""INSERT INTO batch_footprint ({_FOOTPRINT_COLS})
VALUES (%s, %s, %s, %s, %s, %s, {ts_sql('%s')}, {ts_sql('%s::bigint')}, %s, %s, %s, %s, %s,
        %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""
_PROVISIONAL_UPSERT = _FOOTPRINT + """
ON CONFLICT (site, batch_id, revision) DO UPDATE SET
    end_ts = EXCLUDED.end_ts, quantity = EXCLUDED.quantity, unit = EXCLUDED.unit,
    declared_units = EXCLUDED.declared_units, energy = EXCLUDED.energy,
    energy_unit = EXCLUDED.energy_unit, uncertainty = EXCLUDED.uncertainty,
    kgco2e_location = EXCLUDED.kgco2e_location, kgco2e_market = EXCLUDED.kgco2e_market,
    kgco2e_uncertainty = EXCLUDED.kgco2e_uncertainty,
    per_unit_location = EXCLUDED.per_unit_location, per_unit_market = EXCLUDED.per_unit_market,
    primary_data_share = EXCLUDED.primary_data_share, flags = EXCLUDED.flags,
    factor_ids = EXCLUDED.factor_ids, detail = EXCLUDED.detail,
    inputs_sha256 = EXCLUDED.inputs_sha256, computed_at = now()"""
_METER_STATE = """INSERT INTO compute_meter_state (site, meter, carry)
SELECT %s, (%s::text[])[k], carry FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY
    AS x(carry, k)
ON CONFLICT (site, meter) DO UPDATE SET carry = EXCLUDED.carry"""
_SITE_STATE = """INSERT INTO compute_site_state (site, settled_until, data_now, batch_marks)
VALUES (%s, %s, %s, %s)
ON CONFLICT (site) DO UPDATE SET settled_until = EXCLUDED.settled_until,
    data_now = EXCLUDED.data_now, batch_marks = EXCLUDED.batch_marks"""

def _literal(values: list[int] | list[float]) -> str:
    """A PostgreSQL array literal of numbers (``repr`` of a float round-trips exactly;
    ``nan`` is read as NaN)."""
    return "{" + ",".join(map(repr, values)) + "}"


def _indexed(names: list[str]) -> tuple[list[str], str]:
    """Distinct names, and each name's 1-based position among them as an array literal."""
    pos: dict[str, int] = {}
    idx = [pos.setdefault(n, len(pos) + 1) for n in names]
    return list(pos), _literal(idx)


def carry_json(c: MeterCarry) -> bytes:
    return orjson.dumps({"energy": list(c.energy), "co2": list(c.co2),
                         "power_ts": c.power_ts, "power": c.power,  # arrays (NaN: null)
                         "fraction": None if c.fraction is None else list(c.fraction)},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def carry_from_json(raw: object) -> MeterCarry:
    d = raw if isinstance(raw, dict) else orjson.loads(raw)  # type: ignore[arg-type]
    return MeterCarry(kernels.CounterState(*_state(d["energy"])),
                      kernels.CounterState(*_state(d["co2"])),
                      *_held_power_of(d["power_ts"], d["power"]), _fraction(d.get("fraction")))


def _held_power_of(ts: object, power: object) -> tuple[I64, F64]:
    """The held power readings; a carry written before they were lists held the last
    one alone (-1 and null: none yet)."""
    if not isinstance(ts, list) or not isinstance(power, list):
        ts, power = ([ts], [power]) if isinstance(ts, int) and ts >= 0 else ([], [])
    values = [math.nan if p is None else float(p) for p in power]  # type: ignore[arg-type]
    return np.array(ts, dtype=np.int64), np.array(values, dtype=np.float64)


def _fraction(v: object) -> kernels.FractionState | None:
    """A stored hidden-fraction range (absent in carries written before it existed: the
    range starts afresh at the meter's next interval, as at its first)."""
    if not isinstance(v, list):
        return None
    lo, hi, mid, restarts = v
    return kernels.FractionState(float(lo), float(hi), float(mid), int(restarts))


def _state(v: Sequence[object]) -> tuple[int, float, float, int, int]:
    def num(x: object) -> float:
        return float("nan") if x is None else float(x)  # type: ignore[arg-type]
    moved = int(v[4]) if len(v) > 4 else int(v[0])  # type: ignore[call-overload]
    return int(v[0]), num(v[1]), num(v[2]), int(v[3]), moved  # type: ignore[call-overload]


class ComputeStore:
    """Lifecycle: construct (no I/O) → commit/restore → close."""

    def __init__(self, dsn: str, group: str, connect_timeout_s: float = 5.0) -> None:
        self.dsn = dsn
        self.group = group
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        # (site, meter) -> the carry as last written in this connection's transactions: a
        # meter whose carry did not move is not written again (forgotten with the
        # connection, so a rolled-back micro-batch never leaves it wrong)
        self._carries: dict[tuple[str, str], bytes] = {}

    @property
    def conn(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, timeout_s=self.connect_timeout_s)
        return self._conn

    def close(self) -> None:
        self._carries.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------ offsets and ledger
    def load_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        with self.conn.transaction():
            return read_offsets(self.conn, self.group, tps)

    def new_frames(self, cur: psycopg.Cursor[tuple[object, ...]],
                   frames: Sequence[FrameKey]) -> tuple[set[int], list[int]]:
        """Record ``frames``; the indices that are new, and those that conflict (same key,
        another body: the gateway's sequence restarted; ingest refuses them too). A frame
        whose body a ledger reset retired is neither: a replay, not used (ingest: replayed)."""
        if not frames:
            return set(), []
        cur.execute(_RETIRED, ([f.digest for f in frames],))
        retired = {bytes(r[0]) for r in cur.fetchall()}  # type: ignore[call-overload]
        live = [f for f in frames if f.digest not in retired]
        if not live:
            return set(), []
        cols = list(zip(*[(f.gateway, f.stream, f.seq, f.site, f.digest, f.partition, f.offset)
                          for f in live], strict=True))
        cur.execute(_FRAMES, [list(c) for c in cols])
        fresh = {(str(g), str(s), int(q)) for g, s, q in cur.fetchall()}  # type: ignore[call-overload]
        new = {i for i, f in enumerate(frames)
               if f.digest not in retired and (f.gateway, f.stream, f.seq) in fresh}
        if len(new) == len(live):
            return new, []
        cur.execute(_SEEN, [list(cols[0]), list(cols[1]), list(cols[2])])
        digests = {(str(g), str(s), int(q)): bytes(d)  # type: ignore[call-overload]
                   for g, s, q, d in cur.fetchall()}
        conflicts = [i for i, f in enumerate(frames) if i not in new and f.digest not in retired
                     and digests.get((f.gateway, f.stream, f.seq)) != f.digest]
        return new, conflicts

    # ------------------------------------------------------------ results
    def write(self, cur: psycopg.Cursor[tuple[object, ...]], state: SiteState,
              out: Outcome) -> None:
        site = state.view.model.site
        self._intervals(cur, site, state, out)
        for b in out.batches:
            cur.execute(_BATCH, (site, b.batch_id, b.asset, b.product, b.start_ns, b.end_ns,
                                 b.quantity, b.unit))
        if out.state_changes:
            a, t, c = zip(*out.state_changes, strict=True)
            cur.execute(_STATES, (site, list(a), list(t), list(c)))
        if out.allocations:
            rows = out.allocations
            k = np.repeat(np.arange(1, len(rows) + 1), [len(r.end) for r in rows])
            ids, b_idx = _indexed([b for r in rows for b in r.batch_id])
            rules, r_idx = _indexed([x for r in rows for x in r.rule])
            cur.execute(_ALLOC, (site, [r.meter for r in rows], ids, rules,
                                 _literal(k.tolist()),
                                 _literal(np.concatenate([r.end for r in rows]).tolist()), b_idx,
                                 _literal(np.concatenate([r.energy for r in rows]).tolist()),
                                 r_idx))
        provisional: list[tuple[object, ...]] = []
        other: list[tuple[object, ...]] = []
        for revision, status, fp in out.footprints:
            (provisional if status == "provisional" else other).append(
                self._footprint(state, revision, status, fp))
        # pipelined (psycopg's executemany): one round trip per statement kind
        if provisional:
            cur.executemany(_PROVISIONAL_UPSERT, provisional)
        if other:
            cur.executemany(_FOOTPRINT, other)
        self._carry(cur, site, state)
        cur.execute(_SITE_STATE, (site, state.settled_until, state.data_now_ns,
                                  orjson.dumps(state.batch_marks).decode()))

    def _intervals(self, cur: psycopg.Cursor[tuple[object, ...]], site: str, state: SiteState,
                   out: Outcome) -> None:
        meters = [m for m, iv in out.intervals.items() if len(iv)]
        if not meters:
            return
        ivs = [out.intervals[m] for m in meters]
        k = np.repeat(np.arange(1, len(meters) + 1), [len(iv) for iv in ivs])
        cols = [_literal(np.concatenate([getattr(iv, name) for iv in ivs]).tolist())
                for name in ("start", "end", "energy", "estimated", "flags", "p_start",
                             "p_end", "co2")]
        cur.execute(_INTERVALS, (site, meters, [state.view.carriers[m] for m in meters],
                                 _literal(k.tolist()), *cols))

    def _carry(self, cur: psycopg.Cursor[tuple[object, ...]], site: str,
               state: SiteState) -> None:
        """Every meter's carry that moved, in one statement."""
        meters, carries = [], []
        for meter, carry in state.carry.items():
            raw = carry_json(carry)
            if self._carries.get((site, meter)) != raw:
                self._carries[(site, meter)] = raw
                meters.append(meter)
                carries.append(raw)
        if meters:  # the carries as one JSON array: no per-element quoting of text
            cur.execute(_METER_STATE, (site, meters, (b"[" + b",".join(carries) + b"]").decode()))

    def _footprint(self, state: SiteState, revision: int, status: str,
                   fp: Footprint) -> tuple[object, ...]:
        b = fp.batch
        model = state.view.model
        units = None
        if b.quantity is not None and b.unit and b.product in model.products:
            try:
                units = model.declared_units(b.product, b.quantity, b.unit)
            except ValueError:
                units = None
        canonical = {c: _canonical_unit(c) for c in fp.energy}
        detail = {"per_meter": fp.per_meter, "methods": sorted(fp.methods),
                  "estimated": fp.estimated, "carbon_meter_kg": fp.carbon_meter_kg}
        params = (model.site, b.batch_id, revision, status, b.asset, b.product, b.start_ns,
                  b.end_ns, b.quantity, b.unit, units, orjson.dumps(fp.energy).decode(),
                  orjson.dumps(canonical).decode(), orjson.dumps(fp.uncertainty).decode(),
                  fp.kgco2e_location, fp.kgco2e_market, fp.kgco2e_uncertainty,
                  fp.kgco2e_location / units if units else None,
                  fp.kgco2e_market / units if units else None,
                  fp.primary_data_share, sorted(fp.flags), fp.factor_ids,
                  orjson.dumps(detail).decode(), fp.inputs_sha256)
        return params

    def save_offsets(self, cur: psycopg.Cursor[tuple[object, ...]],
                     offsets: dict[TopicPartition, int]) -> None:
        """The partitions' next offsets, in the transaction that stored their results."""
        save_offsets(cur, self.group, offsets)

    # ------------------------------------------------------------ restore
    def restore(self, state: SiteState) -> None:
        """Rebuild ``state`` from compute's tables (after a restart or reassignment)."""
        site = state.view.model.site
        c = self.conn
        with c.transaction():
            row = c.execute("SELECT settled_until, data_now, batch_marks FROM "
                            "compute_site_state WHERE site = %s", (site,)).fetchone()
            if row is None:
                return
            state.settled_until, state.data_now_ns = int(row[0]), int(row[1])  # type: ignore[call-overload]
            state.batch_marks = {str(g): int(t) for g, t in dict(row[2]).items()}  # type: ignore[call-overload]
            for meter, carry in c.execute(
                    "SELECT meter, carry FROM compute_meter_state WHERE site = %s", (site,)):
                state.carry[str(meter)] = carry_from_json(carry)
                self._carries[(site, str(meter))] = carry_json(state.carry[str(meter)])
            kept_from = self._restore_batches(state, site)
            self._restore_intervals(state, site, kept_from)
            for asset, ts, code in c.execute(
                    f"SELECT asset, {ns_sql('ts')}, code FROM compute_state_change "
                    f"WHERE site = %s ORDER BY ts", (site,)):
                state.states.setdefault(str(asset), StateChanges()).add(
                    i64([ts]), i64([code]))

    def _restore_batches(self, state: SiteState, site: str) -> int:
        """The batches and their footprints' latest revisions; returns from when intervals
        are needed in memory (``SiteState.retain_from``)."""
        c = self.conn
        for bid, asset, product, s, e, q, u in c.execute(
                f"SELECT batch_id, asset, product, {ns_sql('start_ts')}, {ns_sql('end_ts')}, "
                f"quantity, unit FROM compute_batch WHERE site = %s", (site,)):
            state.batches[str(bid)] = Batch(str(bid), str(asset), str(product), int(s),  # type: ignore[call-overload]
                                            None if e is None else int(e),  # type: ignore[call-overload]
                                            q, u)  # type: ignore[arg-type]
        for bid, rev, status, energy, kg in c.execute(
                "SELECT batch_id, revision, status, energy, kgco2e_location "
                "FROM batch_footprint_latest WHERE site = %s", (site,)):
            state.stored[str(bid)] = Stored(int(rev), str(status), dict(energy), float(kg))  # type: ignore[call-overload, arg-type]
        final = {b for b, s in state.stored.items() if s.status != "provisional"}
        # a final batch whose last shares were not settled draws from its first settled
        # row's interval on, or from settled_until if none is (SiteState.final_from)
        half2 = 2 * state.view.residual_half_ns
        tails = [b for b in final if b in state.batches
                 and state.batches[b].end_or_open > state.settled_until - half2]
        if tails:
            for bid, first in c.execute(
                    f"SELECT b, (SELECT {ns_sql('min(end_ts)')} FROM allocation a "
                    f"WHERE a.site = %s AND a.batch_id = b) FROM unnest(%s::text[]) AS b",
                    (site, tails)):
                state.final_from[str(bid)] = min(state.settled_until, int(
                    first if first is not None else state.settled_until))  # type: ignore[call-overload]
        kept_from = state.retain_from(state.settled_until, final)
        for bid in final:
            b = state.batches.get(bid)
            if b is not None and b.end_or_open <= kept_from:
                del state.batches[bid]
        return kept_from

    def _restore_intervals(self, state: SiteState, site: str, kept_from: int) -> None:
        rows = self.conn.execute(
            f"SELECT meter, {ns_sql('start_ts')}, {ns_sql('end_ts')}, energy, estimated, flags,"
            f" coalesce(power_start, 'NaN'), coalesce(power_end, 'NaN'), coalesce(co2, 'NaN')"
            f" FROM energy_interval WHERE site = %s AND end_ts > {_TS} ORDER BY meter, end_ts",
            (site, kept_from)).fetchall()
        by_meter: dict[str, list[tuple[object, ...]]] = {}
        for r in rows:
            by_meter.setdefault(str(r[0]), []).append(r[1:])
        for meter, rs in by_meter.items():
            cols = list(zip(*rs, strict=True))
            state.series[meter] = Intervals(i64(cols[0]), i64(cols[1]), f64(cols[2]),
                                            f64(cols[3]), i64(cols[4]), f64(cols[5]),
                                            f64(cols[6]), f64(cols[7]))


def _canonical_unit(carrier: str) -> str:
    return CANONICAL_UNIT.get(carrier, "")
