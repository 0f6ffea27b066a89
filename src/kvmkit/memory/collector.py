"""The one stateful piece of the memory collection path: the previous reading, nothing older.

Memory is bounded by the live VMs (one reading each plus the reader's per-VM caches); history goes to a file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from kvmkit.errors import InvalidInput
from kvmkit.memory.calc import memory_report
from kvmkit.memory.model import MemoryReport, Reading
from kvmkit.memory.procfs import MemReader


class MemCollector:
    def __init__(self, reader: MemReader | None = None) -> None:
        self._reader = reader or MemReader()
        self._prev: Reading | None = None

    @property
    def reader(self) -> MemReader:
        return self._reader

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> MemCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample(self) -> MemoryReport | None:
        """The interval since the previous call; None on the first call (it only sets the baseline)."""
        current = self._reader.read()
        previous, self._prev = self._prev, current
        return None if previous is None else memory_report(previous, current)

    def run(self, interval_s: float, count: int | None, stop: threading.Event | None = None) -> Iterator[MemoryReport]:
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
