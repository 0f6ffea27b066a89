"""The congestion sample history: IntervalReports as JSON lines (the shared format of kvmkit.sampling.history)."""

from __future__ import annotations

from kvmkit.congestion.model import IntervalReport
from kvmkit.sampling.history import History, HistoryWriter

__all__ = ["HistoryWriter", "last_time", "stream"]

RECORDINGS = History(IntervalReport, "congestion")
stream = RECORDINGS.stream
last_time = RECORDINGS.last_time
