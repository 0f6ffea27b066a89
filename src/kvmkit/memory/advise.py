"""How far could this host's RAM have been oversubscribed and still kept memory pressure under the SLO? Pure,
streamed, bounded memory.

Per recorded interval t: RAM M, the VMs' resident memory D_t (Σ QEMU RSS: what the guests really take), the
host's available memory A_t, the configured ratio R0_t = Σ configured / M, and the pressure p_t (the worst VM's
memory PSI some over the interval; the host's where no VM has a cgroup PSI).

Two answers, both printed:
  * observed — the highest ratio the host actually ran at (0.05 bins) whose p-th percentile pressure kept the SLO;
  * fit — with the same mix of VMs scaled to ratio R, resident demand grows to D_t·R/R0_t and must fit in what was
    resident plus what was available, less a reserve: D_t·R/R0_t ≤ D_t + A_t − reserve·M, i.e.
        R_fit,t = R0_t · (D_t + A_t − reserve·M) / D_t.
    Over the intervals that kept the SLO, the (100 − p)-th percentile of R_fit,t (the tight moments) is the highest
    ratio at which memory would still have fitted without reclaim. Intervals that broke the SLO are not
    extrapolated from.
`ram_ratio` is the fit when the SLO held at the recorded ratios (else the observed answer, else None), on a 0.05
grid, at most RATIO_MAX. Assumptions worth stating in a plan: guests use memory as recorded (their RSS is their
demand; page cache inside guests counts), the host's own use and KSM savings stay as recorded, no swap is
counted as room.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel

from kvmkit.errors import InvalidInput
from kvmkit.memory.model import MemoryReport
from kvmkit.sampling.percentile import percentile as _percentile

RATIO_STEP = 0.05
RATIO_MAX = 8.0
MAX_SAMPLES = 100_000  # fits kept for the percentile: a day at 1 Hz is 86,400; beyond, every k-th is kept
BIN_PCT = 0.1  # pressure percentiles come from fixed 0.1 pp histograms: memory does not grow with the history
_BINS = round(100 / BIN_PCT) + 1


def _histogram_percentile(counts: np.ndarray, q: float) -> float:
    """The value (in %) of the bin where the cumulative count first reaches q % of the total."""
    reached = counts.cumsum() >= math.ceil(counts.sum() * q / 100.0)
    return round(float(reached.argmax()) * BIN_PCT, 3)


class RatioBin(BaseModel):
    ram_ratio: float
    intervals: int
    pressure_pct: float  # the percentile of the worst VM's memory pressure in this bin


class MemoryAdvice(BaseModel):
    intervals: int
    slo_pressure_pct: float
    percentile: float
    reserve_pct: float
    observed_ratio_max: float  # the highest ratio recorded
    observed_pressure_pct: float  # the percentile of pressure over the whole history
    observed_ok_ratio: float | None  # the highest recorded ratio whose pressure kept the SLO
    fit_ratio: float | None  # the model's answer from the intervals that kept the SLO
    ram_ratio: float | None  # what to put in `kvmkit plan`'s [policy] ram_ratio
    bins: list[RatioBin]
    method: str = "observed ratios + resident-demand fit; see kvmkit.memory.advise"


def _pressure(report: MemoryReport) -> float | None:
    values = [vm.psi_some_pct for vm in report.vms if vm.psi_some_pct is not None]
    return max(values) if values else report.host.detail.psi_some_pct


def _grid(ratio: float) -> float:
    """Down to the 0.05 grid (a ratio is only claimed where it was reached), but never 0: a lab's 0.02 is ≤ 0.05."""
    return round(max(RATIO_STEP, min(RATIO_MAX, math.floor(ratio / RATIO_STEP + 1e-9) * RATIO_STEP)), 2)


def advise(
    reports: Iterable[MemoryReport], slo_pressure_pct: float, percentile: float = 95, reserve_pct: float = 5.0
) -> MemoryAdvice:
    """Stream the history once; bounded by the number of 0.05 ratio bins and MAX_SAMPLES fits."""
    if not 0 < slo_pressure_pct < 100:
        raise InvalidInput(f"SLO must be between 0 and 100 %, got {slo_pressure_pct}")
    if not 0 < percentile <= 100:
        raise InvalidInput(f"percentile must be in (0, 100], got {percentile}")
    if not 0 <= reserve_pct < 50:
        raise InvalidInput(f"reserve must be in [0, 50) % of RAM, got {reserve_pct}")
    by_bin: dict[float, np.ndarray] = {}
    everything = np.zeros(_BINS, dtype=np.int64)
    fits: list[float] = []
    stride = 1
    n = 0
    ratio_max = 0.0
    for report in reports:
        host = report.host
        pressure = _pressure(report)
        if pressure is None or not host.ram_bytes or host.oversubscription is None or host.oversubscription <= 0:
            continue
        n += 1
        ratio_max = max(ratio_max, host.oversubscription)
        index = min(_BINS - 1, round(pressure / BIN_PCT))
        by_bin.setdefault(_grid(host.oversubscription), np.zeros(_BINS, dtype=np.int64))[index] += 1
        everything[index] += 1
        resident = sum(vm.rss_bytes or 0 for vm in report.vms)
        if pressure <= slo_pressure_pct and resident > 0 and host.available_bytes is not None:
            room = resident + host.available_bytes - reserve_pct / 100 * host.ram_bytes
            if n % stride == 0:
                fits.append(max(0.0, host.oversubscription * room / resident))
            if len(fits) >= MAX_SAMPLES:  # thin out: keep every other, and sample half as often from now on
                fits = fits[::2]
                stride *= 2
    if n == 0:
        raise InvalidInput("the history holds no interval with a memory pressure figure: nothing to advise from")
    bins = [RatioBin(ram_ratio=r, intervals=int(v.sum()), pressure_pct=_histogram_percentile(v, percentile))
            for r, v in sorted(by_bin.items())]  # fmt: skip
    ok = [b.ram_ratio for b in bins if b.pressure_pct <= slo_pressure_pct]
    observed_ok = max(ok) if ok else None
    fit = _grid(_percentile(fits, 100 - percentile)) if fits else None
    held = all(b.pressure_pct <= slo_pressure_pct for b in bins)
    ram_ratio = fit if held and fit is not None else observed_ok
    return MemoryAdvice(
        intervals=n,
        slo_pressure_pct=slo_pressure_pct,
        percentile=percentile,
        reserve_pct=reserve_pct,
        observed_ratio_max=round(ratio_max, 4),
        observed_pressure_pct=_histogram_percentile(everything, percentile),
        observed_ok_ratio=observed_ok,
        fit_ratio=fit,
        ram_ratio=ram_ratio if ram_ratio else None,
        bins=bins[-20:],
    )
