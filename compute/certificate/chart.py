"""The energy timeline of a batch's meters, with the batch window marked (matplotlib, PNG).

One panel per carrier; each meter's mean rate per counter interval (energy ÷
interval length: kW, Nm3/h, t/h, GJ/h) as steps; the batch's run shaded.
Rendered off-screen (Agg), so no display or system library is needed.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from compute.certificate.data import Certificate
from compute.site import RATE_UNIT


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def energy_timeline_png(cert: Certificate, dpi: int = 110) -> bytes:
    by_carrier: dict[str, list[str]] = {}
    for meter in sorted(cert.timeline):
        m = cert.model.meters.get(meter)
        if m is not None:
            by_carrier.setdefault(m.carrier, []).append(meter)
    carriers = sorted(by_carrier) or ["electricity"]
    fig, axes = plt.subplots(len(carriers), 1, figsize=(9, 2.4 * len(carriers)),
                             sharex=True, squeeze=False)
    fp = cert.footprint
    start, end = _dt(fp["start_ns"]), _dt(fp["end_ns"])
    for ax, carrier in zip(axes[:, 0], carriers, strict=True):
        for meter in by_carrier.get(carrier, []):
            s, e, energy = cert.timeline[meter]
            rate = [en / ((b - a) / 3.6e12) if b > a else 0.0
                    for a, b, en in zip(s, e, energy, strict=True)]
            xs = [_dt(a) for a in s] + [_dt(e[-1])]
            ax.stairs(rate, xs, label=meter, linewidth=1.2)
        ax.axvspan(start, end, color="#2a9d8f", alpha=0.15, label="batch window")
        ax.axvline(start, color="#2a9d8f", linewidth=1)
        ax.axvline(end, color="#2a9d8f", linewidth=1)
        ax.set_ylabel(f"{carrier}\n{RATE_UNIT.get(carrier, '')}")
        ax.legend(loc="upper right", fontsize=7, ncol=3)
        ax.grid(alpha=0.3)
    axes[-1, 0].xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
    axes[-1, 0].set_xlabel(f"UTC, {start:%Y-%m-%d}")
    fig.suptitle(f"Energy of batch {fp['batch_id']}'s meters (mean rate per counter interval)",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
