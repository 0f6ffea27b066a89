"""The memory sample history: MemoryReports as JSON lines (the shared format of kvmkit.sampling.history)."""

from __future__ import annotations

from kvmkit.memory.model import MemoryReport
from kvmkit.sampling.history import History, HistoryWriter

__all__ = ["HistoryWriter", "last_time", "stream"]

RECORDINGS = History(MemoryReport, "memory")
stream = RECORDINGS.stream
last_time = RECORDINGS.last_time
