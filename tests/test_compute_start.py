"""The compute worker's cold start (issue 9): the kernels it loads at start are the ones
its first micro-batch calls, all from numba's on-disk cache, and loading them leaves
nothing behind (cffi, hidden from numba for that moment, is importable again)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import sys
import orjson
from pathlib import Path
from numba.core.registry import CPUDispatcher
from compute.kernels_warm import warm_kernels
warm_kernels().join()
hidden = "cffi" in sys.modules  # None there would make every later `import cffi` fail
import cffi  # noqa: F401  (importable again)
from compute import kernels, kernels_alloc, kernels_check, kernels_many, kernels_smooth
mods = (kernels, kernels_alloc, kernels_check, kernels_many, kernels_smooth)
def loaded():
    return {f"{m.__name__}.{n}": len(d.overloads) for m in mods for n, d in vars(m).items()
            if isinstance(d, CPUDispatcher) and d.__module__ == m.__name__}
at_start = loaded()
misses = sum(sum(d.stats.cache_misses.values()) for m in mods for d in vars(m).values()
             if isinstance(d, CPUDispatcher))
from bench.bench_compute_worker import T0, Record, _run_path
from bench.compute_plant import PlantStream, scaled_site
from compute.site import load_site
model = load_site(scaled_site(Path(sys.argv[1]), 2))
stream = PlantStream(2)
records = [Record(d, 0, i) for k in range(150) for i, (_, d) in
           enumerate(stream.poll(T0 + k * 10**10))]
state = _run_path(model, {stream.gateway(0): stream.keys[0].public_key()}, records)
print(orjson.dumps({"hidden": hidden, "misses": misses, "at_start": at_start,
                    "after": loaded(), "stored": len(state.stored)}).decode())
"""


def _probe(tmp_path: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "site.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, object] = orjson.loads(proc.stdout.splitlines()[-1])
    return out


def test_start_loads_every_kernel_the_first_micro_batches_call_from_the_cache(
        tmp_path: Path) -> None:
    _probe(tmp_path)  # a fresh clone compiles here and fills the cache
    got = _probe(tmp_path)
    assert got["hidden"] is False
    assert got["misses"] == 0, "a kernel compiled at start: its cache entry is not used"
    assert got["stored"], "the micro-batches computed no footprint"
    # no kernel gained a signature after start (one would compile or load on the hot path)
    assert got["after"] == got["at_start"], (got["at_start"], got["after"])
