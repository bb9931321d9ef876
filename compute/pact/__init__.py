"""PACT (WBCSD Partnership for Carbon Transparency) exchange of batch footprints.

``python -m compute export pact`` writes ProductFootprint JSON per the PACT
Technical Specifications v3 (3.0.3) from the stored final and revised
footprints; ``python -m compute serve`` offers the same footprints through the
PACT v3 REST API. Every footprint is checked against the ``ProductFootprint``
schema of the OpenAPI document shipped under ``spec/`` (an unaltered copy,
with its licence) before it leaves.
"""
