"""The package boundaries of ARCHITECTURE.md, checked on the source.

A gateway installs only the ``edge`` extra, so edge code must not import the
server's libraries; the simulators are an independent peer and import nothing
of ours (sharing decoding code would hide the bugs they exist to find).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"edge", "ingest", "compute", "simulators", "deploy", "tests", "bench"}

# package -> (our modules it may import, third-party roots it must not import)
RULES: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "edge": (("edge",), {"psycopg", "numba", "grafana_client"}),
    "ingest": (("ingest", "edge.wire", "edge.tls"), {"numba"}),
    "compute": (("compute", "edge.wire", "edge.tls", "ingest"), set()),
    "simulators": (("simulators",), set()),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_respect_the_card(package: str) -> None:
    allowed, banned = RULES[package]
    offences = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            root = name.split(".")[0]
            if root in OURS and not any(
                name == a or name.startswith(a + ".") for a in allowed
            ):
                offences.append(f"{path.relative_to(ROOT)} imports {name}")
            if root in banned:
                offences.append(f"{path.relative_to(ROOT)} imports {root} (not in its role)")
    assert not offences, "\n".join(offences)


def test_edge_role_installs_no_server_libraries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    edge_reqs = " ".join(project["dependencies"] + project["optional-dependencies"]["edge"])
    for server_only in ("psycopg", "numba", "numpy", "grafana"):
        assert server_only not in edge_reqs
    # every requirement is pinned, so CI installs what was tested
    for reqs in [project["dependencies"], *project["optional-dependencies"].values()]:
        for req in reqs:
            assert "==" in req or req.startswith("plantprint["), f"unpinned: {req}"
