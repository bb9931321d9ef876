"""Site configs and meter profiles: samples load; bad ones name file, key, expectation."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config
from edge.logs import EDGE_LIBRARIES
from edge.profiles import load_profile
from edge.requests import plan_requests

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "edge"
SAMPLES = sorted(DEPLOY.glob("*.toml"))
PROFILES = sorted((DEPLOY / "profiles").glob("*.toml"))


def test_samples_and_profiles_are_shipped():
    assert {"small.toml", "example-full.toml"} <= {p.name for p in SAMPLES}
    assert {"sdm630", "pm5000", "em24", "flow-gas", "flow-steam", "carbon"} <= {
        p.stem for p in PROFILES
    }


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_config_loads(path: Path):
    config = load_config(path)
    assert config.site and config.gateway
    assert config.has_output
    for dev in config.modbus:
        assert dev.points, dev.meter
        assert plan_requests(dev.points, dev.gap, dev.request_limit)
    assert config.spool.path.is_absolute() or str(config.spool.path).startswith(str(DEPLOY))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_plans_the_vendor_blocks(path: Path):
    profile = load_profile(path)
    reqs = plan_requests(profile.points, profile.max_gap, profile.max_registers)
    assert all(r.count <= 125 for r in reqs)
    assert len(reqs) <= 2  # each family's map reads in its documented block(s)


def test_small_matches_the_simulator_scenario():
    """The agent for `small` polls every Modbus meter of the scenario with its family."""
    from simulators.config import load_scenario

    scenario = load_scenario(DEPLOY.parents[0] / "scenarios" / "small.toml")
    config = load_config(DEPLOY / "small.toml")
    want = {
        m.id: (scenario.endpoints.modbus_port_base + m.modbus.port_offset, m.modbus.unit, m.family)
        for m in scenario.meters
        if m.modbus is not None
    }
    got = {d.meter: (d.port, d.unit_id, d.register_map.family) for d in config.modbus}
    assert got == want
    assert config.site == scenario.scenario.site


def test_counter_width_is_recorded():
    em24 = load_profile(DEPLOY / "profiles" / "em24.toml")
    energy = next(p for p in em24.points if p.channel == "energy")
    assert (energy.kind, energy.counter_bits, energy.type) == ("counter", 32, "uint32")
    carbon = load_profile(DEPLOY / "profiles" / "carbon.toml")
    assert {p.channel: p.counter_bits for p in carbon.points if p.kind == "counter"} == {
        "energy": 64, "co2": 32,
    }


BASE = """
site = "s1"
gateway = "gw1"
signing_key = "k.pem"
[spool]
path = "spool.db"
[outputs.kafka]
bootstrap_servers = ["127.0.0.1:9092"]
"""

DEVICE = """
[[modbus]]
meter = "M1"
host = "127.0.0.1"
profile = "em24"
"""


OPCUA = """
[[opcua]]
name = "plc"
endpoint = "opc.tcp://127.0.0.1:4840"
publishing_interval_s = 0.25
[[opcua.nodes]]
node = "ns=2;s=Oven.Energy"
meter = "M-OVEN"
channel = "energy"
sampling_interval_s = 0.02
[[opcua.mes]]
asset = "oven"
state = "ns=2;s=Oven.State"
"""


def _write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    (tmp_path / "profiles").mkdir(exist_ok=True)
    for prof in PROFILES:
        (tmp_path / "profiles" / prof.name).write_text(prof.read_text())
    return path


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path):
    config = load_config(_write(tmp_path, BASE + DEVICE))
    assert config.signing_key == tmp_path / "k.pem"
    assert config.spool.path == tmp_path / "spool.db"
    assert config.modbus[0].register_map.family == "em24"


def test_profile_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    path = _write(site_dir, BASE + DEVICE.replace('"em24"', '"vendor/em24.toml"'))
    (site_dir / "vendor").mkdir()
    (site_dir / "vendor" / "em24.toml").write_text((DEPLOY / "profiles" / "em24.toml").read_text())
    monkeypatch.chdir(tmp_path)  # not the config's folder: a cwd lookup would miss
    assert load_config(path).modbus[0].register_map.family == "em24"
    monkeypatch.chdir(site_dir)
    assert load_config(path.name).modbus[0].register_map.family == "em24"


@pytest.fixture
def library_log_levels() -> Iterator[None]:
    """main() quiets the client libraries' loggers for the process; give them back after,
    or later tests that read kafka-python's log (tests/tls) see nothing."""
    saved = {name: logging.getLogger(name).level for name in EDGE_LIBRARIES}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("library_log_levels")
def test_init_key_refuses_an_invalid_key_file_with_a_clear_error(tmp_path: Path, capsys):
    from edge.__main__ import main

    path = _write(tmp_path, BASE + DEVICE)
    (tmp_path / "k.pem").write_text("not a key\n")
    assert main(["--config", str(path), "--init-key"]) == 2
    err = capsys.readouterr()
    assert err.out == ""
    assert f"key error: signing key {tmp_path / 'k.pem'}: cannot load" in err.err
    assert "Traceback" not in err.err
    assert (tmp_path / "k.pem").read_text() == "not a key\n"  # never overwritten


@pytest.mark.parametrize(
    ("text", "key", "expectation"),
    [
        (BASE.replace('gateway = "gw1"\n', ""), "gateway", "Field required"),
        (BASE + DEVICE.replace('host = "127.0.0.1"', "host = 5"), "modbus[0].host", "string"),
        (BASE + DEVICE + "port = 70000\n", "modbus[0].port", "less than or equal to 65535"),
        (BASE + DEVICE + "colour = 1\n", "modbus[0].colour", "Extra inputs"),
        (BASE + DEVICE + 'clock = "sun"\n', "modbus[0].clock", "'device' or 'gateway'"),
        (BASE + DEVICE + DEVICE, "(root)", "repeated: M1"),
        (BASE, "(root)", "at least one"),
        (
            BASE + DEVICE.replace('"em24"', '"nope"'),
            "modbus[0] (meter M1).profile",
            "profile 'nope' not found",
        ),
        (BASE + DEVICE + 'channels = ["energy", "vibes"]\n', ".channels", "no channel vibes"),
        (
            BASE + DEVICE + "reconnect_delay_s = 5.0\nreconnect_delay_max_s = 1.0\n",
            "modbus[0]",
            "reconnect_delay_max_s must be >= reconnect_delay_s",
        ),
        ("site = [", "", "not valid TOML"),
        # durations are seconds in every config (keys ending _s); the old _ms keys are gone
        (BASE + "linger_ms = 5\n", "outputs.kafka.linger_ms", "Extra inputs"),
        (BASE + OPCUA.replace("publishing_interval_s = 0.25", "publishing_interval_ms = 250"),
         "opcua[0].publishing_interval_ms", "Extra inputs"),
        (BASE.replace('["127.0.0.1:9092"]', '"127.0.0.1:9092"') + DEVICE,
         "outputs.kafka.bootstrap_servers", "valid list"),
        (BASE + DEVICE + '[outputs.mqtt]\nurl = "mqtt://broker"\ntls = true\n',
         "outputs.mqtt.tls", "Extra inputs"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path, text, key, expectation):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert key in message
    assert expectation in message


def test_opcua_intervals_are_seconds_in_the_config_and_ms_on_the_wire(tmp_path: Path):
    server = load_config(_write(tmp_path, BASE + OPCUA)).opcua[0]
    assert (server.publishing_interval_s, server.publishing_interval_ms) == (0.25, 250.0)
    assert server.nodes[0].sampling_interval_ms == 20.0
    assert (server.mes[0].sampling_interval_s, server.mes[0].sampling_interval_ms) == (0.5, 500)


def test_inline_profile_and_bad_word_order(tmp_path: Path):
    inline = BASE + """
    [[modbus]]
    meter = "M1"
    host = "127.0.0.1"
    [modbus.profile]
    family = "custom"
    word_order = "CDAB"
    points = [{ channel = "energy", address = 10, type = "uint32", kind = "counter" }]
    """
    config = load_config(_write(tmp_path, inline))
    point = config.modbus[0].points[0]
    assert (point.word_order, point.counter_bits) == ("CDAB", 32)
    bad = inline.replace('word_order = "CDAB"', 'word_order = "ACBD"')
    with pytest.raises(ConfigError, match=r"modbus\[0\]\.profile.*word_order.*'ABCD'"):
        load_config(_write(tmp_path, bad))


def test_bad_profile_file_names_profile_file_and_key(tmp_path: Path):
    path = _write(tmp_path, BASE + DEVICE)
    em24 = tmp_path / "profiles" / "em24.toml"
    em24.write_text(em24.read_text().replace('type = "uint32"', 'type = "uint33"'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(em24) in str(err.value)
    assert "points[12].type" in str(err.value)


def test_address_offset_workaround_shifts_and_checks(tmp_path: Path):
    text = BASE + DEVICE + "[modbus.workarounds]\naddress_offset = -1\n"
    with pytest.raises(ConfigError, match="address_offset"):
        load_config(_write(tmp_path, text))  # em24 starts at address 0
    pm = DEVICE.replace('"em24"', '"pm5000"')
    text = BASE + pm + "[modbus.workarounds]\naddress_offset = -1\n"
    config = load_config(_write(tmp_path, text))
    assert config.modbus[0].points[0].address == 2998


def test_config_errors_never_show_passwords(tmp_path: Path):
    # a table-level error quotes the table it refused: its secrets must be masked
    mqtt = ('[outputs.mqtt]\npassword = "hunter2-secret"\nurl = "mqtt://broker:1883"\n'
            'username = "gw"\nca_file = "ca.pem"\n')
    (tmp_path / "ca.pem").write_text("not used\n")
    path = _write(tmp_path, BASE + DEVICE + mqtt)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "outputs.mqtt" in message and "'password': '***'" in message
    assert "hunter2" not in message


def test_a_meter_extends_a_shipped_profile_without_copying_it(tmp_path: Path):
    """Inline ``extends``: one point overridden, one added next to the map; the base's
    max_gap puts the added register in the same read."""
    site = BASE + """
    [[modbus]]
    meter = "M-PRESS"
    host = "127.0.0.1"
    [modbus.profile]
    extends = "sdm630"
    points = [
        { channel = "power", address = 0x34, type = "float32", scale = 1.0, unit = "W" },
        { channel = "thd_v1", address = 0xEA, type = "float32", unit = "%" },
        { channel = "run_hours", address = 0x4C, type = "float32", unit = "h" },
    ]
    """
    dev = load_config(_write(tmp_path, site)).modbus[0]
    sdm630 = load_profile(DEPLOY / "profiles" / "sdm630.toml")
    by = {p.channel: p for p in dev.points}
    assert dev.register_map.family == "sdm630" and dev.gap == sdm630.max_gap == 40
    assert set(by) == {p.channel for p in sdm630.points} | {"thd_v1", "run_hours"}
    assert (by["power"].scale, by["power"].unit, by["power"].table) == (1.0, "W", "input")
    assert by["energy"] == next(p for p in sdm630.points if p.channel == "energy")
    reqs = plan_requests(dev.points, dev.gap, dev.request_limit)
    # 0x00..0x4D in one read (the added neighbour merged), 0xEA on its own
    assert [(r.table, r.address, r.count) for r in reqs] == [("input", 0, 0x4E),
                                                              ("input", 0xEA, 2)]


def test_a_profile_file_extends_another_and_a_loop_is_refused(tmp_path: Path):
    site = _write(tmp_path, BASE + DEVICE.replace('profile = "em24"', 'profile = "em24-plus"'))
    (tmp_path / "profiles" / "em24-plus.toml").write_text(textwrap.dedent("""
        extends = "em24"
        description = "EM24 with its run-hour counter"
        [[points]]
        channel = "run_hours"
        address = 0x40
        type = "uint32"
        word_order = "CDAB"
        kind = "counter"
        unit = "h"
    """))
    dev = load_config(site).modbus[0]
    assert dev.register_map.description == "EM24 with its run-hour counter"
    assert dev.points[-1].channel == "run_hours" and dev.points[-1].counter_bits == 32
    (tmp_path / "profiles" / "em24-plus.toml").write_text('extends = "em24-plus"\n')
    with pytest.raises(ConfigError, match=r"modbus\[0\] \(meter M1\)\.profile: extends "
                                          r"'em24-plus': more than 8 levels"):
        load_config(site)
    (tmp_path / "profiles" / "em24-plus.toml").write_text('extends = "em99"\n')
    with pytest.raises(ConfigError, match=r"profile 'em99' not found"):
        load_config(site)
