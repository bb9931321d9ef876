"""The site model as the worker and the allocation core read it.

:class:`compute.site.SiteModel` is what the plant engineer writes; this view
precomputes, once per site, what every micro-batch needs: each meter's
counter parameters in canonical units, carriers, resolutions, scopes and the
meters each asset's batches depend on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from compute.series import CounterSpec
from compute.site import Meter, SiteModel

# kgCO2 per kWh no grid ever reaches: the carbon meter's CO2 counter spike cap
_MAX_KG_PER_KWH = 1.5


@dataclass(frozen=True)
class SiteSpecView:
    model: SiteModel
    counters: Mapping[str, CounterSpec]
    co2: Mapping[str, CounterSpec]
    carriers: Mapping[str, str]
    resolutions: Mapping[str, float]  # canonical unit per count
    scopes: Mapping[str, tuple[str, ...]]
    power_channels: Mapping[str, str]  # meter -> its power channel
    gap_s: float
    co2_resolution_kg: Mapping[str, float]  # smart carbon meters' CO2 counter, kg per count
    needs: Mapping[str, tuple[str, ...]]  # asset -> the meters its batches need data from
    max_concurrent: Mapping[str, int]  # asset -> the most batches it runs at once (if set)

    # the allocation core's SiteSpec protocol
    @property
    def meters(self) -> Mapping[str, Meter]:
        return self.model.meters

    @property
    def idle_policy(self) -> str:
        return self.model.idle_policy

    @property
    def final_timeout_s(self) -> float:
        return self.model.final_timeout_s

    @property
    def carbon_tolerance(self) -> float:
        return self.model.carbon_tolerance

    def resolutions_at(self, baselines: Mapping[str, float]) -> dict[str, float]:
        """Per meter, one count in canonical units at its counter's present value: the
        count of an integer counter, the float spacing of a float counter (a float32 kWh
        register near 60 000 kWh resolves ~0.004 kWh); ``baselines`` canonical."""
        out = dict(self.resolutions)
        for mid, m in self.model.meters.items():
            if m.counter_bits is None and mid in baselines:
                f = self.model.canonical_factor(mid)
                out[mid] = m.quantum(baselines[mid] / f) * f
        return out

    @property
    def residual_half_ns(self) -> int:
        """Half the residual smoothing window (ns); also how much history and how much
        data past a batch's end the worker keeps for it."""
        return int(self.model.residual_smoothing_s * 1e9) // 2

    def scope(self, meter: str) -> tuple[str, ...]:
        return self.scopes[meter]

    def split_of(self, asset: str) -> str:
        return self.model.assets[asset].split

    def meters_for(self, asset: str) -> tuple[str, ...]:
        got = self.needs.get(asset)
        return self.model.meters_for_asset(asset) if got is None else got


def _counter(model: SiteModel, mid: str, gap_s: float) -> CounterSpec:
    m = model.meters[mid]
    return CounterSpec(channel=m.channel, factor=model.canonical_factor(mid),
                       wrap=m.wrap or 0.0, resolution=m.resolution, rated_per_h=m.rated,
                       gap_s=gap_s)


def _co2(m: Meter, gap_s: float) -> CounterSpec | None:
    if m.carbon is None:
        return None
    c = m.carbon
    # kg counter, canonical t: the cap follows the meter's rated kW at an impossible factor
    return CounterSpec(channel=c.co2_channel, factor=1e-3, wrap=c.co2_wrap or 0.0,
                       resolution=c.co2_resolution,
                       rated_per_h=m.rated * _MAX_KG_PER_KWH * 1e-3, gap_s=gap_s)


def site_view(model: SiteModel, gap_s: float) -> SiteSpecView:
    """The view of ``model``; ``gap_s``: an interval longer than this is a gap."""
    co2 = {mid: s for mid, m in model.meters.items() if (s := _co2(m, gap_s)) is not None}
    return SiteSpecView(
        model=model,
        counters={mid: _counter(model, mid, gap_s) for mid in model.meters},
        co2=co2,
        carriers={mid: m.carrier for mid, m in model.meters.items()},
        resolutions={mid: m.resolution * model.canonical_factor(mid)
                     for mid, m in model.meters.items()},
        scopes={mid: model.scope(mid) for mid in model.meters},
        power_channels={mid: m.power_channel for mid, m in model.meters.items()
                        if m.power_channel},
        gap_s=gap_s,
        co2_resolution_kg={mid: m.carbon.co2_resolution for mid, m in model.meters.items()
                           if m.carbon is not None},
        needs={a: model.meters_for_asset(a) for a in model.assets},
        max_concurrent={a: x.max_concurrent for a, x in model.assets.items()
                        if x.max_concurrent is not None},
    )
