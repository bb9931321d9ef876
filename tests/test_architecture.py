"""The package boundaries, checked on the source against the README's package table.

The README's "may import" column is the rule, read from the README itself, so
the two cannot drift: ``ingest`` and ``compute`` may import the shared contracts
that live in ``edge/`` (``edge.wire``, ``edge.tls``, ``edge.settings``,
``edge.backoff``, ``edge.logs``) and nothing else of the edge (compute may also
import ingest); the simulators are an independent peer and import nothing of
ours (sharing decoding code would hide the bugs they exist to find). A gateway
installs only the ``edge`` extra, so edge code must not import the server's
libraries either. Each shared part has one home: the frozen config base and
the TOML loader (``edge/settings.py``), the envelope's layout
(``edge/wire.py``), the transports' security keys (``edge/tls.py``).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"edge", "ingest", "compute", "simulators", "deploy", "tests", "bench"}
CHECKED = ("edge", "ingest", "compute", "simulators")

# third-party roots a package must not import (not in its role's install)
BANNED: dict[str, set[str]] = {
    "edge": {"psycopg", "numba", "grafana_client"},
    "ingest": {"numba"},
    "compute": set(),
    "simulators": set(),
}


def readme_rules() -> dict[str, tuple[str, ...] | None]:
    """package -> modules of ours it may import besides itself, from README's package table.

    ``None``: the README lets it import anything (deploy). A cell starting with
    "nothing" allows none; otherwise the allowed modules are the cell's `code` spans.
    """
    rules: dict[str, tuple[str, ...] | None] = {}
    column: int | None = None
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0] == "package" and any(c.startswith("may import") for c in cells):
            column = next(i for i, c in enumerate(cells) if c.startswith("may import"))
        elif column is not None and cells and cells[0].startswith("`"):
            package = cells[0].strip("`/")
            cell = cells[column]
            rules[package] = (() if cell.startswith("nothing")
                              else None if cell.startswith("anything")
                              else tuple(re.findall(r"`([a-z_.]+)`", cell)))
        elif column is not None and not line.startswith("|"):
            break
    return rules


def test_the_readme_states_the_rule_for_every_package() -> None:
    rules = readme_rules()
    assert set(CHECKED) <= set(rules), rules
    # the shared contracts that live in edge/, and nothing else of it, for the server side
    shared = ("edge.wire", "edge.tls", "edge.settings", "edge.backoff", "edge.logs")
    assert rules["ingest"] == shared
    assert rules["compute"] == (*shared, "ingest")
    assert rules["edge"] == () and rules["simulators"] == ()


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", CHECKED)
def test_package_imports_respect_the_readme(package: str) -> None:
    rule = readme_rules()[package]
    assert rule is not None, f"README lets {package} import anything"
    allowed, banned = (package, *rule), BANNED[package]
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


# One copy of each shared part in the packages that share them (the simulators keep
# their own on purpose): a regex over the source, with the only file allowed to match.
SINGLE_HOMES = [
    (r"ConfigDict\(\s*frozen", "edge/settings.py", "the frozen config base"),
    (r"^\s*(import tomllib|from tomllib )", "edge/settings.py", "the TOML loader"),
    (r"\b(HEADER_BYTES|SIGNATURE_BYTES|MAGIC)\b|b\"PPW1\"|\[\s*4\s*:\s*68\s*\]",
     "edge/wire.py", "the envelope's layout"),
    (r"\btls_insecure\s*:", "edge/tls.py", "the MQTT security keys"),
    (r"\bssl_cafile\s*:", "edge/tls.py", "the Kafka security keys"),
]


@pytest.mark.parametrize(("pattern", "home", "what"), SINGLE_HOMES,
                         ids=[w for _, _, w in SINGLE_HOMES])
def test_shared_parts_have_one_home(pattern: str, home: str, what: str) -> None:
    regex = re.compile(pattern, re.MULTILINE)
    found = sorted(
        str(path.relative_to(ROOT))
        for package in ("edge", "ingest", "compute") if (ROOT / package).is_dir()
        for path in (ROOT / package).rglob("*.py")
        if regex.search(path.read_text())
    )
    assert found == [home], f"{what} lives in {home} only; also in {found}"
