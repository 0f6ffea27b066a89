"""How far could this host have been oversubscribed and still kept the SLO? Pure, streamed, bounded memory.

Judged on contention (run delay minus the vCPUs' own throttled time) wherever the history has it: a vCPU capped
by its quota waits for its quota, not for the CPUs that more or fewer neighbours would change.

Derivation (a fluid processor-sharing model, checked by `bench`): in each recorded interval t the vCPUs
wanted d_t = Σ(run + wait) / (Δt · vCPUs) of a CPU each (run + wait is the time a vCPU was runnable, so this
counts the demand that congestion delayed, not just what was served — conservative for bursty guests). Of
each CPU, κ_t = 1 − (load outside QEMU + steal by the hypervisor below) was left for the VMs (both from
/proc/stat; κ = 1 for histories that lack them). With R vCPUs per physical CPU the CPUs are asked for R·d_t
and a work-conserving fair scheduler can serve κ_t, so the mean wait per vCPU is max(0, d_t − κ_t/R). For k
always-runnable threads on an otherwise idle CPU (d = 1, κ = 1, R = k) that is the textbook (k−1)/k. What the
fluid model cannot see — short waits from bursts while the host was not saturated — is measured at the
recorded ratio R₀ as the residual r_t = c_t − max(0, d_t − κ_t/R₀) (floored at 0) and assumed to grow in
proportion to R/R₀. The predicted congestion at R is then
    c_t(R) = max(0, d_t − κ_t/R) + r_t · R / R₀
and the advice is the highest R on a 0.05 grid whose percentile over the intervals stays within the SLO.
Each candidate R keeps a fixed 0.1 pp histogram, so memory does not grow with the length of the history.
Assumptions worth stating in any plan: the vCPU mix and per-vCPU demand stay as recorded, load outside QEMU
and steal stay as recorded (QEMU's own emulator/io threads are not modelled separately), and all vCPUs float
over all CPUs (no pinning).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel

from kvmkit.congestion.model import IntervalReport
from kvmkit.errors import InvalidInput

RATIO_STEP = 0.05
RATIO_MAX = 16.0
BIN_PCT = 0.1
MIN_CAPACITY = 0.05  # a host fully taken by other load still serves VMs a little; avoids dividing by ~0


class RatioPrediction(BaseModel):
    oversubscription: float
    congestion_pct: float  # predicted percentile of the per-interval mean vCPU congestion


class Advice(BaseModel):
    intervals: int
    slo_congestion_pct: float
    percentile: float
    observed_oversubscription: float  # mean allocated vCPUs per CPU over the history
    observed_congestion_pct: float  # the percentile actually measured (contention where throttling is known)
    mean_vcpu_demand_pct: float  # mean d_t, percent of one CPU per vCPU
    mean_capacity_pct: float  # mean κ_t: share of each CPU left for VMs by other load and steal
    max_oversubscription: float | None  # None: not even the lowest candidate keeps the SLO
    predictions: list[RatioPrediction]
    method: str = "fluid processor-sharing model + measured burst residual; see kvmkit.congestion.advise"


def _histogram_percentile(counts: np.ndarray, q: float) -> np.ndarray:
    """Per row: the value (in %) of the bin where the cumulative count first reaches q % of the row total."""
    total = counts.sum(axis=1, keepdims=True)
    reached = counts.cumsum(axis=1) >= np.ceil(total * q / 100.0)
    return (reached.argmax(axis=1) * BIN_PCT).astype(float)


def advise(reports: Iterable[IntervalReport], slo_congestion_pct: float, percentile: float = 95) -> Advice:
    """Stream the history once; return the highest ratio whose predicted percentile keeps the SLO."""
    if not 0 < slo_congestion_pct < 100:
        raise InvalidInput(f"SLO must be between 0 and 100 %, got {slo_congestion_pct}")
    if not 0 < percentile <= 100:
        raise InvalidInput(f"percentile must be in (0, 100], got {percentile}")
    ratios = np.round(np.arange(RATIO_STEP * 5, RATIO_MAX + 1e-9, RATIO_STEP), 4)
    bins = round(100 / BIN_PCT) + 1
    counts = np.zeros((len(ratios), bins), dtype=np.int64)
    observed = np.zeros(bins, dtype=np.int64)
    rows = np.arange(len(ratios))
    n = 0
    ratio_sum = demand_sum = capacity_sum = 0.0
    for report in reports:
        host = report.host
        if host.vcpus_allocated == 0 or host.pcpus == 0 or host.oversubscription <= 0:
            continue
        measured_vcpus = sum(len(vm.vcpus) for vm in report.vms)
        if measured_vcpus == 0:
            continue
        demand = host.vcpu_demand / measured_vcpus
        congestion = host.slo_pct / 100  # contention: a vCPU waiting for its own quota is not oversubscription
        r0 = host.oversubscription
        taken = (host.other_load_pct or 0.0) + (host.steal_pct or 0.0)
        capacity = max(MIN_CAPACITY, 1 - taken / 100)
        residual = max(0.0, congestion - max(0.0, demand - capacity / r0))
        predicted = np.maximum(0.0, demand - capacity / ratios) + residual * ratios / r0
        index = np.clip(np.rint(predicted * 100 / BIN_PCT), 0, bins - 1).astype(np.int64)
        np.add.at(counts, (rows, index), 1)
        observed[min(bins - 1, round(host.slo_pct / BIN_PCT))] += 1
        n += 1
        ratio_sum += r0
        demand_sum += demand
        capacity_sum += capacity
    if n == 0:
        raise InvalidInput("the history holds no interval with measured vCPUs: nothing to advise from")
    predicted_pct = _histogram_percentile(counts, percentile)
    keeps = np.nonzero(predicted_pct <= slo_congestion_pct)[0]
    best = float(ratios[keeps.max()]) if len(keeps) else None
    shown = [r for r in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0) if r <= RATIO_MAX]
    if best is not None:
        shown = sorted({*shown, best})
    predictions = [
        RatioPrediction(oversubscription=r, congestion_pct=round(float(predicted_pct[_index(ratios, r)]), 2))
        for r in shown
    ]
    return Advice(
        intervals=n,
        slo_congestion_pct=slo_congestion_pct,
        percentile=percentile,
        observed_oversubscription=round(ratio_sum / n, 3),
        observed_congestion_pct=round(float(_histogram_percentile(observed[None, :], percentile)[0]), 2),
        mean_vcpu_demand_pct=round(100 * demand_sum / n, 2),
        mean_capacity_pct=round(100 * capacity_sum / n, 2),
        max_oversubscription=best,
        predictions=predictions,
    )


def _index(ratios: np.ndarray, ratio: float) -> int:
    return int(np.abs(ratios - ratio).argmin())
