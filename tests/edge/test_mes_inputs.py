"""Batch events the MES hands over: the HTTP endpoint and the drop folder.

Signed and spooled by a running agent, forwarded, decoded with the gateway's
public key and landed in PostgreSQL by ingest's store; a malformed event is
refused with its reason and nothing else is lost.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from deploy.procs import free_port
from edge import wire
from edge.agent import Agent, StartError
from edge.config import config_from_dict
from edge.mes_events import MesEventError, events_of_csv, events_of_json
from tests.edge.test_agent import MemoryOutput, write_key

TOKEN = "mes-token-0123456789abcdef"
T = 1_736_150_400_000_000_000  # 2025-01-06T08:00:00Z


# ------------------------------------------------------------------ parsing (pure)


def test_json_and_csv_events_become_wire_events_exactly() -> None:
    one = {"asset": "L1-press", "batch_id": "B-1", "product": "clinker", "kind": "end",
           "ts": "2025-01-06T09:00:00.123456+01:00", "quantity": 41.5, "unit": "t"}
    assert events_of_json(json.dumps(one).encode()) == [
        wire.BatchEvent("L1-press", "B-1", "clinker", "end", T + 123_456_000, 41.5, "t")]
    csv_text = ("asset,batch_id,product,kind,ts,quantity,unit\n"
                "L1-press,B-2,clinker,start,2025-01-06T08:00:00Z,,\n"
                "L1-press,B-2,clinker,quantity,2025-01-06T08:00:01Z,3,t\n")
    assert events_of_csv(csv_text) == [
        wire.BatchEvent("L1-press", "B-2", "clinker", "start", T),
        wire.BatchEvent("L1-press", "B-2", "clinker", "quantity", T + 10**9, 3.0, "t")]


@pytest.mark.parametrize(("data", "reason", "says"), [
    (b"{not json", "malformed_json", "not JSON"),
    (b"[]", "invalid_event", "no event"),
    (b'{"asset":"a","batch_id":"b","kind":"end","ts":"2025-01-06T08:00:00"}',
     "invalid_event", "event[0].ts: Input should have timezone info"),
    (b'{"asset":"a","batch_id":"b","kind":"quantity","ts":"2025-01-06T08:00:00Z",'
     b'"quantity":2}', "invalid_event", "a quantity event needs quantity and unit"),
    (b'[{"asset":"a","batch_id":"b","kind":"start","ts":"2025-01-06T08:00:00Z"},'
     b'{"asset":"a","batch_id":"b","kind":"finish","ts":"2025-01-06T08:00:00Z"}]',
     "invalid_event", "event[1].kind: Input should be 'start', 'end' or 'quantity'"),
    (b'{"asset":"","batch_id":"b","kind":"end","ts":"2025-01-06T08:00:00Z"}',
     "invalid_event", "event[0].asset: String should have at least 1 character"),
    ('{"asset":"a","batch_id":"Cafe\u0301-1","kind":"end","ts":"2025-01-06T08:00:00Z"}'
     .encode(), "invalid_event", "is not Unicode NFC"),
    (b'{"asset":"a","batch_id":"b","product":"p\\u0000","kind":"end",'
     b'"ts":"2025-01-06T08:00:00Z"}', "invalid_event", "event[0].product: String should match"),
])
def test_a_malformed_event_is_refused_with_its_reason(data: bytes, reason: str,
                                                       says: str) -> None:
    with pytest.raises(MesEventError) as err:
        events_of_json(data)
    assert err.value.reason == reason and says in str(err.value), str(err.value)


def test_csv_with_unknown_columns_is_refused_naming_them() -> None:
    with pytest.raises(MesEventError, match=r"malformed_csv: .*unknown \['lot'\]"):
        events_of_csv("asset,batch_id,kind,ts,lot\na,b,start,2025-01-06T08:00:00Z,7\n")


# ------------------------------------------------------------ a running agent


def _config(tmp_path: Path, port: int) -> Any:
    return config_from_dict({
        "site": "plant-a", "gateway": "gw-mes", "signing_key": "gw.pem",
        "spool": {"path": "spool.db"}, "metrics": {"port": 0},
        "mes_http": {"port": port, "token": TOKEN},
        "mes_folder": {"path": "mes-drop", "poll_interval_s": 0.1},
    }, tmp_path / "site.toml")


def _post(port: int, body: bytes, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/batch-events", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _until(cond: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (files and a list: nothing to await on)
            await asyncio.sleep(0.05)


def _event(batch: str, kind: str, minute: int, **extra: Any) -> dict[str, Any]:
    return {"asset": "L1-press", "batch_id": batch, "product": "clinker", "kind": kind,
            "ts": f"2025-01-06T08:{minute:02d}:00Z", **extra}


@pytest.mark.services
@pytest.mark.timeout(60)
async def test_http_and_folder_events_are_signed_spooled_and_landed(tmp_path, new_database):
    from ingest.migrate import migrate
    from ingest.store import Accepted, Store

    key = write_key(tmp_path)
    port = free_port()
    out = MemoryOutput()
    async with Agent(_config(tmp_path, port), signing_key=key, publishers=[out],
                     frame_interval_s=0.1):
        post = lambda body, token=TOKEN: asyncio.to_thread(_post, port, body, token)  # noqa: E731
        good = json.dumps([_event("B-1", "start", 0),
                           _event("B-1", "end", 30, quantity=41.5, unit="t")]).encode()
        assert await post(good, None) == (401, {"reason": "unauthorized"})
        assert (await post(good, "wrong-token-0123456789"))[0] == 401
        code, answer = await post(b'{"asset": "L1-press", "batch_id":')
        assert (code, answer["reason"]) == (400, "malformed_json")
        bad = json.dumps([_event("B-9", "start", 1), _event("B-9", "stop", 2)]).encode()
        code, answer = await post(bad)
        assert (code, answer["reason"]) == (400, "invalid_event")
        assert "event[1].kind" in answer["error"]
        assert await post(good) == (200, {"spooled": 2})
        # the drop folder: a good CSV, a file with one bad event, a file still being written
        drop = tmp_path / "mes-drop"
        (drop / "b2.csv").write_text("asset,batch_id,product,kind,ts,quantity,unit\n"
                                     "L1-press,B-2,cement,start,2025-01-06T08:40:00Z,,\n"
                                     "L1-press,B-2,cement,end,2025-01-06T09:10:00Z,38,t\n")
        (drop / "b3.json").write_text(json.dumps([_event("B-3", "start", 50),
                                                  _event("B-3", "quantity", 55, quantity=1)]))
        (drop / "b4.json.part").write_text("{")
        await _until(lambda: (drop / "done" / "b2.csv").exists()
                     and (drop / "refused" / "b3.json").exists())
        # forwarded: out of the spool to the output
        await _until(lambda: any(b'"B-2"' in m.data and b'"end"' in m.data for m in out.got))
    reason = (drop / "refused" / "b3.json.reason").read_text()
    assert "invalid_event" in reason and "event[1]" in reason
    assert (drop / "b4.json.part").exists()  # not complete: not touched
    refused = {(lbl, REGISTRY.get_sample_value(
        "edge_mes_events_refused_total", {"source": src, "reason": lbl}))
        for src, lbl in [("http", "unauthorized"), ("http", "malformed_json"),
                         ("http", "invalid_event"), ("folder", "invalid_event")]}
    assert all(n is not None and n >= 1 for _, n in refused), refused
    # every batch frame verifies with the gateway's public key; land them
    frames = [wire.decode(m.data, {"gw-mes": key.public_key()}) for m in out.got
              if m.stream == "batches"]
    dsn = new_database()
    migrate(dsn)
    store = Store(dsn, "mes-inputs-test", use_copy=False)
    try:
        store.land([Accepted(f, "batches", 0, i) for i, f in enumerate(frames)],
                   {("batches", 0): len(frames)})
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT batch_id, product, kind, to_char(ts AT TIME ZONE 'UTC', "
                            "'HH24:MI'), quantity, unit FROM batch_event "
                            "ORDER BY ts, kind DESC").fetchall()
    assert rows == [("B-1", "clinker", "start", "08:00", None, None),
                    ("B-1", "clinker", "end", "08:30", 41.5, "t"),
                    ("B-2", "cement", "start", "08:40", None, None),
                    ("B-2", "cement", "end", "09:10", 38.0, "t")]


async def test_a_taken_port_stops_the_start_naming_the_key(tmp_path):
    import socket

    key = write_key(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartError, match=r"^\[mes_http\] port: cannot listen on "
                                             rf"127\.0\.0\.1:{port}"):
            async with Agent(_config(tmp_path, port), signing_key=key,
                             publishers=[MemoryOutput()]):
                pass
