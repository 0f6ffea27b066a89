"""What `kvmkit congestion` recorded for each VM, summed up for `tune vm --history` (pure, streamed).

A definition says whether a VM's vCPUs are pinned; a congestion history says whether that mattered: how long its
vCPUs waited for a host CPU (contention: run delay minus their own quota throttling, which pinning cannot cure).
The pinning check shows that figure, and a VM that waited beyond the latency class's SLO gets the check one step
more severe. Memory stays fixed whatever the history's length: one 0.1 pp histogram per VM judged."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvmkit.congestion.model import IntervalReport

# the top class's SLO in congestion's sample policy (kvmkit/congestion/policy.py): p95 contention ≤ 2 %
CONTENDED_P95_PCT = 2.0
BINS = 1001  # 0.0 … 100.0 % in 0.1 pp steps
PERCENTILE = 95


@dataclass(frozen=True)
class Contention:
    intervals: int
    mean_pct: float
    p95_pct: float
    max_pct: float

    @property
    def contended(self) -> bool:
        return self.p95_pct > CONTENDED_P95_PCT

    def text(self) -> str:
        return (f"congestion history: contention p95 {self.p95_pct:.1f} % (mean {self.mean_pct:.1f}, max "
                f"{self.max_pct:.1f}) over {self.intervals} intervals")


class _Tally:
    __slots__ = ("bins", "count", "high", "total")

    def __init__(self) -> None:
        self.count, self.total, self.high, self.bins = 0, 0.0, 0.0, [0] * BINS

    def add(self, pct: float) -> None:
        pct = min(max(pct, 0.0), 100.0)
        self.count += 1
        self.total += pct
        self.high = max(self.high, pct)
        self.bins[round(pct * 10)] += 1

    def summary(self) -> Contention:
        wanted, seen, p95 = self.count * PERCENTILE / 100, 0, 0.0
        for index, n in enumerate(self.bins):
            seen += n
            if seen >= wanted:
                p95 = index / 10
                break
        return Contention(self.count, round(self.total / self.count, 2), p95, round(self.high, 2))


def summarize(reports: Iterable[IntervalReport], names: set[str]) -> dict[str, Contention]:
    """Per VM named, over every interval that measured it (a VM the history never saw is left out)."""
    tallies: dict[str, _Tally] = {}
    for report in reports:
        for vm in report.vms:
            if vm.domain in names:
                tallies.setdefault(vm.domain, _Tally()).add(vm.slo_pct)
    return {name: tally.summary() for name, tally in tallies.items()}
