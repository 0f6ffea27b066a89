"""The one stateful piece of the collection path: it remembers the previous reading and nothing older.

Memory is bounded by the number of live threads (one reading each, plus the reader's name caches);
history, when wanted, goes to a file (`history.py`), never into this object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from kvmkit.congestion.calc import interval_report
from kvmkit.congestion.model import IntervalReport, Reading
from kvmkit.congestion.procfs import ProcReader
from kvmkit.errors import InvalidInput


class Collector:
    def __init__(self, reader: ProcReader | None = None) -> None:
        self._reader = reader or ProcReader()
        self._prev: Reading | None = None

    @property
    def reader(self) -> ProcReader:
        return self._reader

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> Reading:
        """A fresh reading without touching the baseline (the exporter wants raw counters)."""
        return self._reader.read()

    def sample(self) -> IntervalReport | None:
        """The interval since the previous call; None on the first call (it only sets the baseline)."""
        current = self._reader.read()
        previous, self._prev = self._prev, current
        return None if previous is None else interval_report(previous, current)

    def run(
        self, interval_s: float, count: int | None, stop: threading.Event | None = None
    ) -> Iterator[IntervalReport]:
        """Reports every interval_s on a fixed schedule (no drift), `count` of them or until `stop` is set."""
        if interval_s <= 0:
            raise InvalidInput(f"interval must be > 0 s, got {interval_s}")
        if count is not None and count < 1:
            raise InvalidInput(f"count must be ≥ 1, got {count}")
        stop = stop or threading.Event()
        self.sample()
        deadline = time.monotonic()
        emitted = 0
        while count is None or emitted < count:
            deadline += interval_s
            if stop.wait(max(0.0, deadline - time.monotonic())):
                return
            report = self.sample()
            if report is not None:
                emitted += 1
                yield report
