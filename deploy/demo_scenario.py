"""Which scenario file, edge config and site model a demo run uses.

``--scenario`` is a shipped name (``small`` → ``deploy/scenarios/small.toml``)
or a path to a scenario file anywhere. The edge config and the site model are
those shipped for the scenario's name, else for the scenario it ``extends``
(followed up the chain), unless ``--edge-config`` names one. Anything missing
is a :class:`ServiceError` saying what was looked for, never a traceback.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from deploy.procs import ServiceError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "scenarios"


@dataclass(frozen=True)
class DemoScenario:
    path: Path
    name: str
    edge_config: Path
    site_model: Path | None  # None: compute has no model of this plant (it is skipped)
    last_end_s: int  # simulated second the last planned batch ends

    @property
    def default_duration_s(self) -> int:
        """Long enough for every batch to end and every meter to report past it (compute
        finalises a batch once its data, the residual's smoothing window and the batch
        events' delay allowance are all past its end)."""
        return self.last_end_s + 900


def scenario_path(arg: str) -> Path:
    """A shipped name or a file path (``x``, ``x.toml``, ``dir/x.toml``) as an existing file."""
    candidates = [Path(arg)]
    if "/" not in arg and not arg.endswith(".toml"):
        candidates.insert(0, SHIPPED / f"{arg}.toml")
    for c in candidates:
        if c.is_file():
            return c.resolve()
    shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
    raise ServiceError(f"demo: no scenario {arg!r} (shipped: {shipped}; or give a file path)")


def _last_end(chain: list[tuple[str, Path]]) -> int:
    """The latest planned batch end of the nearest scenario in the chain that plans any."""
    for _name, path in chain:
        batches = tomllib.loads(path.read_text()).get("batches", [])
        if batches:
            return max(int(b.get("end_s", 0)) for b in batches)
    return 6000


def _chain(path: Path) -> list[tuple[str, Path]]:
    """(name, file) of the scenario and every scenario it extends, nearest first."""
    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    while path not in seen:
        seen.add(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ServiceError(f"demo: scenario {path}: {exc}") from exc
        out.append((str(data.get("scenario", {}).get("name", path.stem)), path))
        base = data.get("extends")
        if not base:
            break
        path = (path.parent / base).resolve()
    return out


def _shipped_for(chain: list[tuple[str, Path]], folder: str) -> Path | None:
    for name, path in chain:
        for stem in dict.fromkeys((name, path.stem)):
            found = ROOT / "deploy" / folder / f"{stem}.toml"
            if found.is_file():
                return found
    return None


def resolve(arg: str, edge_config: str | None = None) -> DemoScenario:
    path = scenario_path(arg)
    chain = _chain(path)
    edge = Path(edge_config).resolve() if edge_config else _shipped_for(chain, "edge")
    if edge is None or not edge.is_file():
        looked = ", ".join(f"deploy/edge/{n}.toml" for n, _ in chain)
        raise ServiceError(f"demo: no edge config for scenario {chain[0][0]} (looked for "
                           f"{edge_config or looked}); give one with --edge-config")
    return DemoScenario(path, chain[0][0], edge, _shipped_for(chain, "sites"), _last_end(chain))
