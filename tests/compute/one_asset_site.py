"""A site of one asset, A, for the allocation core (its ``SiteSpec`` protocol), with the
meters a test gives it: every meter's scope is A, the split and idle policy the simplest."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MeterStub:
    role: str
    children: tuple[str, ...] = ()
    rule: str | None = None


@dataclass(frozen=True)
class OneAssetSite:
    meters: dict[str, MeterStub] = field(default_factory=dict)
    idle_policy: str = "unallocated"
    residual_half_ns: int = 0

    def scope(self, meter: str) -> tuple[str, ...]:
        return ("A",)

    def split_of(self, asset: str) -> str:
        return "equal"
