"""A bad scenario fails at load, naming the file, the key and the expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.config import load_scenario
from simulators.errors import ScenarioError

SMALL = (Path(__file__).resolve().parents[2] / "deploy" / "scenarios" / "small.toml").read_text()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('unit = 2 }', 'unit = 300 }', "meters[2].modbus.unit"),
    ('family = "em24"', 'family = "em99"', "family: unknown 'em99'"),
    ('asset = "L1-press"\nproduct', 'asset = "L9"\nproduct', "batches[0] (B-001).asset"),
    ('slots = 2 ', 'slots = 1 ', "slots >= 2"),
    ('idle_policy = "unallocated"', 'idle_policy = "later"', "allocation.idle_policy"),
    ('children = ["M-PRESS",', 'children = ["M-NOPE",', "children: unknown meter 'M-NOPE'"),
    ('unit = 3 }', 'unit = 2 }', "port_offset 0 unit 2 is used 2 times"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, old: str, new: str,
                                                   expected: str) -> None:
    assert old in SMALL
    path = _write(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_bad_fault_and_unreadable_files(tmp_path: Path) -> None:
    path = _write(tmp_path, SMALL + '\n[[faults]]\nkind = "rollover"\nmeter = "M-PRESS"\n'
                                    'margin = 5.0\n')
    with pytest.raises(ScenarioError, match="expected a meter with a 32-bit counter"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(_write(tmp_path, "[scenario\n"))
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
