"""A site model of two assets, A and B on line L1, with the meters a test gives it
(``compute.site.SiteModel``, checked as a real site model file is): for the
lifecycle tests that run a ``SiteState`` on meters of several levels."""

from __future__ import annotations

from typing import Any

from compute.site import SiteModel

# what every meter of these sites is: electricity in kWh, rated well above its load
METER: dict[str, Any] = {"carrier": "electricity", "unit": "kWh", "rated": 2000.0,
                         "commissioned": "2020-01-01T00:00:00Z"}


def two_asset_model(site: str, meters: dict[str, dict[str, Any]]) -> SiteModel:
    """``meters``: per meter id what differs from ``METER`` (role, asset, children...)."""
    return SiteModel.model_validate({
        "site": site, "geography": "CN-SX", "grid_region": "CN-North",
        "idle_policy": "unallocated", "final_timeout_s": 900.0,
        "assets": {"A": {"line": "L1"}, "B": {"line": "L1"}},
        "meters": {m: {**METER, **spec} for m, spec in meters.items()},
        "products": {"p": {"name": "p", "declared_unit": "kilogram",
                           "mass_per_declared_unit_kg": 1.0}},
    })
