"""compute: counters to interval energy, allocation to batches, footprints (next stage).

Planned per ARCHITECTURE.md: numba kernels in ``compute/kernels.py`` (pure,
arrays in, arrays out), the streaming allocation worker, emission factors,
footprint lifecycle, PACT export and evidence bundles.
"""
