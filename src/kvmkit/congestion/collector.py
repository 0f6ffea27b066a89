"""The congestion collection path's one stateful piece: /proc readings two at a time → interval reports.

Memory is bounded by the number of live threads (one reading each, plus the reader's name caches).
"""

from __future__ import annotations

from kvmkit.congestion.calc import interval_report
from kvmkit.congestion.model import IntervalReport, Reading
from kvmkit.congestion.procfs import ProcReader
from kvmkit.sampling.sampler import Sampler


class Collector(Sampler[Reading, IntervalReport]):
    def __init__(self, reader: ProcReader | None = None) -> None:
        self._procs = reader or ProcReader()
        super().__init__(self._procs, interval_report)

    @property
    def reader(self) -> ProcReader:
        return self._procs

    def read(self) -> Reading:
        """A fresh reading without touching the baseline (the exporter wants raw counters)."""
        return self._procs.read()
