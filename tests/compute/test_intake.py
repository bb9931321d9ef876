"""compute.intake: exactly what ingest accepts, grouped per site and meter; bad input skipped.

No services: frames are signed here and given to ``accept`` as Kafka records would be.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from compute.intake import accept, group_readings
from compute.series import CounterSpec, MeterCarry, advance
from compute.site import load_site
from edge.wire import Frame, Reading, encode, generate_private_key
from ingest.screen import Limits

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_736_143_200 * 10**9
SITE = load_site(ROOT / "deploy/sites/small.toml")
KEY = generate_private_key()
KEYS = {"gw-1": KEY.public_key()}
S = 10**9
SPEC = CounterSpec(channel="energy", factor=1.0, wrap=0.0, resolution=0.0, rated_per_h=500.0,
                   gap_s=300.0)
LIMITS = Limits(now_ns=T0 + 10**12, future_skew_ns=300 * 10**9, earliest_ns=0,
                commissioning_ns={})


def _record(readings: list[Reading], seq: int = 1, offset: int = 0) -> SimpleNamespace:
    frame = Frame.from_readings("demo-site", "gw-1", seq, T0, readings)
    return SimpleNamespace(value=encode(frame, KEY), partition=0, offset=offset)


def test_a_reading_in_a_unit_its_carrier_has_not_is_skipped_not_fatal() -> None:
    rows = [Reading("M-PRESS", "energy", T0, 100.0, "kWh", "good"),
            Reading("M-GAS", "energy", T0, 5.0, "kWh", "good"),  # gas in kWh: not a gas unit
            Reading("M-INC", "energy", T0, 2000.0, "Wh", "good"),  # Wh: converted to kWh
            Reading("M-NOPE", "energy", T0, 1.0, "kWh", "good")]
    got = accept(_record(rows), KEYS, 10**7, LIMITS)
    assert not isinstance(got, str)
    site = group_readings([got], {"demo-site": SITE})["demo-site"]
    assert set(site.readings) == {"M-PRESS", "M-INC"}
    assert site.readings["M-INC"].counter[1].tolist() == [2.0]
    assert site.unknown_meters == {"M-NOPE"}
    assert len(site.unit_errors) == 1 and "M-GAS" in next(iter(site.unit_errors))


def test_what_ingest_refuses_compute_never_uses() -> None:
    good = _record([Reading("M-PRESS", "energy", T0, 100.0, "kWh", "good")])
    forged = SimpleNamespace(value=good.value[:4] + bytes(64) + good.value[68:], partition=0,
                             offset=1)
    assert accept(forged, KEYS, 10**7, LIMITS) == "bad_signature"
    future = _record([Reading("M-PRESS", "energy", T0 + 10**15, 1.0, "kWh", "good")])
    assert accept(future, KEYS, 10**7, LIMITS) == "future_timestamp"


def test_group_readings_keeps_each_channel_in_arrival_order() -> None:
    """intake hands a meter's readings over as they arrived: a late one is not sorted
    into place there, where only this micro-batch would see it."""
    first = _record([Reading("M-PRESS", "energy", T0 + 60 * S, 101.0, "kWh", "good")], 1, 0)
    late = _record([Reading("M-PRESS", "energy", T0 + 30 * S, 100.5, "kWh", "good")], 2, 1)
    got = [accept(r, KEYS, 10**7, LIMITS) for r in (first, late)]
    site = group_readings([g for g in got if not isinstance(g, str)], {"demo-site": SITE})
    counter = site["demo-site"].readings["M-PRESS"].counter
    assert counter[0].tolist() == [T0 + 60 * S, T0 + 30 * S]
    carry = MeterCarry()
    advance(carry, SPEC, site["demo-site"].readings["M-PRESS"])
    assert carry.out_of_order == 1 and carry.energy.last_ts == T0 + 60 * S
