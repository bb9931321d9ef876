"""Evidence bundles: one batch's footprint with everything needed to recompute it.

``bundle`` (:mod:`compute.evidence.bundle`) reads a batch's readings, events,
intervals, allocations, site model, factor rows and code version from the
database into one deterministic archive with a manifest of SHA-256 hashes and a
Merkle root over the readings; ``verify`` (:mod:`compute.evidence.verify`)
recomputes the footprint from the archive alone with compute's own pipeline.
"""
