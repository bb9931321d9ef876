"""The batch tracker's rules, case by case: what a source shows in, which events out."""

from __future__ import annotations

from edge import wire
from edge.batch_tracker import BatchTracker, Observation

S = 1_000_000_000
T = 1_736_150_400 * S  # 2025-01-06T08:00:00Z


def ob(field: str, value: object, at_s: int) -> Observation:
    return Observation(field, value, T + at_s * S)  # type: ignore[arg-type]


def kinds(tracked: list) -> list[tuple[str, str, int, float | None, str | None]]:
    return [(t.event.kind, t.event.batch_id, (t.event.ts_ns - T) // S, t.event.quantity,
             t.event.unit) for t in tracked]


def test_a_batch_id_that_changes_without_a_clear_ends_the_previous_batch() -> None:
    tr = BatchTracker("L1-press", unit="t")
    assert kinds(tr.observe([ob("batch_id", "", 0), ob("product", "", 0)])) == []
    assert kinds(tr.observe([ob("product", "clinker", 10), ob("batch_id", "B-1", 10)])) == [
        ("start", "B-1", 10, None, None)]
    assert kinds(tr.observe([ob("quantity", 41.5, 50)])) == []
    # the next batch's record, written in one go: its id, product and a reset quantity
    out = tr.observe([ob("batch_id", "B-2", 60), ob("product", "cement", 60),
                      ob("quantity", 0.0, 60)])
    assert kinds(out) == [("end", "B-1", 60, 41.5, "t"), ("start", "B-2", 60, None, None)]
    assert [t.event.product for t in out] == ["clinker", "cement"]
    assert out[0].time_from == "source timestamp of batch_id"


def test_a_cleared_id_ends_the_batch_at_the_clear_with_the_quantity_written_then() -> None:
    tr = BatchTracker("L1-press", unit="t")
    tr.observe([ob("batch_id", "B-1", 0), ob("product", "clinker", 0)])
    out = tr.observe([ob("quantity", 12.0, 30), ob("batch_id", "", 30)])
    assert kinds(out) == [("end", "B-1", 30, 12.0, "t")]
    assert tr.describe() == "no batch running (batch id empty)"


def test_a_running_node_marks_start_and_end_and_a_state_code_works_too() -> None:
    tr = BatchTracker("kiln", has_running=True)
    tr.observe([ob("batch_id", "K-7", 0), ob("running", False, 0), ob("unit", "t", 0)])
    assert kinds(tr.observe([ob("running", True, 5)])) == [("start", "K-7", 5, None, None)]
    assert "K-7" in tr.describe() and "running since 2025-01-06T08:00:05Z" in tr.describe()
    out = tr.observe([ob("quantity", 3.5, 100), ob("running", False, 100)])
    assert kinds(out) == [("end", "K-7", 100, 3.5, "t")]
    assert out[0].time_from == "source timestamp of running"


def test_slot_reused_while_the_edge_was_away_ends_the_previous_batch_on_reconnect() -> None:
    """The faults scenario's lost end: the slot shows the next batch when the edge is back;
    its EndTime and Quantity were reset by the next batch, so the end is the time the
    slot showed the next batch and the quantity is unknown."""
    tr = BatchTracker("L2-kiln", has_running=True)
    start_a = [ob("batch_id", "K-1", 960), ob("product", "clinker", 960),
               ob("start_time", T + 960 * S, 960), ob("end_time", None, 960),
               ob("quantity", 0.0, 960), ob("unit", "t", 960), ob("running", True, 960)]
    assert kinds(tr.observe(start_a)) == [("start", "K-1", 960, None, None)]
    tr.reconnected()
    reused = [ob("batch_id", "K-2", 4560), ob("product", "clinker", 4560),
              ob("start_time", T + 4560 * S, 4560), ob("end_time", None, 4560),
              ob("quantity", 0.0, 4560), ob("unit", "t", 4560), ob("running", True, 4560)]
    out = tr.observe(reused)
    assert kinds(out) == [("end", "K-1", 4560, None, None), ("start", "K-2", 4560, None, None)]
    assert out[0].reconciled and out[0].time_from == "source timestamp of batch_id"


def test_slot_ended_and_reused_within_one_notification_keeps_both_events() -> None:
    """End published at 4440 (EndTime 3960: a late end), the next batch shown at 4441:
    both arrive in one notification, grouped by item; source time puts them in order."""
    tr = BatchTracker("L2-kiln", has_running=True)
    tr.observe([ob("batch_id", "K-1", 960), ob("start_time", T + 960 * S, 960),
                ob("quantity", 0.0, 960), ob("unit", "t", 960), ob("running", True, 960)])
    items = [ob("end_time", T + 3960 * S, 4440), ob("end_time", None, 4441),
             ob("quantity", 120.0, 4440), ob("quantity", 0.0, 4441),
             ob("running", False, 4440), ob("running", True, 4441),
             ob("batch_id", "K-2", 4441), ob("start_time", T + 4441 * S, 4441)]
    out = tr.observe(items)
    assert kinds(out) == [("end", "K-1", 3960, 120.0, "t"), ("start", "K-2", 4441, None, None)]
    assert out[0].time_from == "end time node" and not out[0].reconciled


def test_an_ended_slot_first_seen_after_an_agent_restart_still_reports_its_end() -> None:
    tr = BatchTracker("oven", has_running=True)
    out = tr.observe([ob("batch_id", "B-3", 100), ob("running", False, 100),
                      ob("start_time", T, 0), ob("end_time", T + 90 * S, 100),
                      ob("quantity", 7.0, 100), ob("unit", "pcs", 100)])
    assert kinds(out) == [("end", "B-3", 90, 7.0, "pcs")]
    assert kinds(tr.observe([ob("running", False, 200)])) == []  # once


def test_a_plc_without_timestamps_does_not_restart_a_batch_found_running() -> None:
    tr = BatchTracker("press", start_at_first_sight=False)
    assert kinds(tr.observe([ob("batch_id", "17", 0)])) == []
    assert tr.unsent_start == "17"
    # its end is still sent, with the quantity of the poll before the change
    tr.observe([ob("quantity", 5.0, 1), ob("batch_id", "17", 1)])
    out = tr.observe([ob("quantity", 0.0, 2), ob("batch_id", "18", 2)])
    assert kinds(out) == [("end", "17", 2, 5.0, None), ("start", "18", 2, None, None)]


def test_same_batch_shown_again_after_a_reconnect_sends_nothing() -> None:
    tr = BatchTracker("press")
    tr.observe([ob("batch_id", "B-1", 0)])
    tr.reconnected()
    assert tr.observe([ob("batch_id", "B-1", 0), ob("product", "x", 0)]) == []
    assert tr.active is not None and tr.active.batch_id == "B-1"
    assert isinstance(tr.observe([ob("batch_id", "", 9)])[0].event, wire.BatchEvent)
