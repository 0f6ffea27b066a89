"""The one stateful piece of a collection path: it remembers the previous reading and nothing older.

A reader (congestion's ProcReader, memory's MemReader) turns the kernel's files into a reading of cumulative
counters; a pure function turns two readings into a report. Memory is bounded by what the reader keeps for the
live VMs plus one reading; history, when wanted, goes to a file (`history.py`), never into these objects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, Self, TypeVar

from kvmkit.errors import InvalidInput

ReadingT = TypeVar("ReadingT")
ReadingT_co = TypeVar("ReadingT_co", covariant=True)
ReportT = TypeVar("ReportT")
ValueT = TypeVar("ValueT")


class Reader(Protocol[ReadingT_co]):
    def read(self) -> ReadingT_co: ...
    def close(self) -> None: ...


class Sampler(Generic[ReadingT, ReportT]):
    """Readings two at a time → reports: `sample()` for one interval, `run()` on a fixed schedule."""

    def __init__(self, reader: Reader[ReadingT], report: Callable[[ReadingT, ReadingT], ReportT]) -> None:
        self._reader = reader
        self._report = report
        self._prev: ReadingT | None = None

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample(self) -> ReportT | None:
        """The interval since the previous call; None on the first call (it only sets the baseline)."""
        current = self._reader.read()
        previous, self._prev = self._prev, current
        return None if previous is None else self._report(previous, current)

    def run(self, interval_s: float, count: int | None, stop: threading.Event | None = None) -> Iterator[ReportT]:
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


class SharedReading(Generic[ValueT]):
    """For exporters: scrapes that come within `max_age_s` of the last reading share it (one lock, one cached
    value: nothing accumulates between scrapes). `get()` returns the value and the wall time its reading took."""

    def __init__(self, read: Callable[[], ValueT], max_age_s: float = 1.0) -> None:
        self._read = read
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._cached: tuple[float, ValueT, float] | None = None

    def get(self) -> tuple[ValueT, float]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self._max_age_s:
                value = self._read()
                self._cached = (now, value, time.monotonic() - now)
            return self._cached[1], self._cached[2]
