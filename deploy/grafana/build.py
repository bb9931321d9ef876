"""Build the dashboards into JSON files: ``python -m deploy.grafana build``.

The JSON under ``deploy/grafana/dashboards/`` is generated, committed, and what
Grafana's file provisioning and ``push`` load; a test holds it equal to a fresh
build, so an edit to the Python that was not built fails CI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from deploy.grafana import batches, factors, overview, quality

HERE = Path(__file__).resolve().parent
DASHBOARDS_DIR = HERE / "dashboards"

# file stem → builder; the file names are what provisioning and push load
BOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "plant-overview": overview.dashboard,
    "batches": batches.dashboard,
    "batch": batches.drilldown,
    "data-quality": quality.dashboard,
    "factors": factors.dashboard,
}


def models() -> dict[str, Dashboard]:
    """Every dashboard as the SDK's model (its panels' targets keep their Python types)."""
    boards = {name: make().build() for name, make in BOARDS.items()}
    for board in boards.values():
        for number, panel in enumerate(board.panels or [], start=1):
            panel.id_val = number  # Grafana keys panel state and links by a unique id
    return boards


def render(model: Dashboard) -> str:
    return json.dumps(model, cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name → JSON text, as build writes it."""
    return {f"{name}.json": render(model) for name, model in models().items()}


def build(out: Path = DASHBOARDS_DIR) -> list[Path]:
    """Write every dashboard; files of dashboards no longer defined are removed."""
    out.mkdir(parents=True, exist_ok=True)
    texts = rendered()
    for stale in sorted(set(p.name for p in out.glob("*.json")) - set(texts)):
        (out / stale).unlink()
    written = []
    for name, text in texts.items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
