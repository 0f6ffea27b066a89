"""The memory collection path's one stateful piece: readings two at a time → memory reports.

Memory is bounded by the live VMs (one reading each plus the reader's per-VM caches); history goes to a file.
"""

from __future__ import annotations

from kvmkit.memory.calc import memory_report
from kvmkit.memory.model import MemoryReport, Reading
from kvmkit.memory.procfs import MemReader
from kvmkit.sampling.sampler import Sampler


class MemCollector(Sampler[Reading, MemoryReport]):
    def __init__(self, reader: MemReader | None = None) -> None:
        self._mem = reader or MemReader()
        super().__init__(self._mem, memory_report)

    @property
    def reader(self) -> MemReader:
        return self._mem
