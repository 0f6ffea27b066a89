"""The shared sampling loop, scrape cache and history format, with a counting reader and real files."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from kvmkit.errors import InvalidInput, NotFound
from kvmkit.sampling import history as history_mod
from kvmkit.sampling.history import History, HistoryWriter
from kvmkit.sampling.sampler import Sampler, SharedReading


class CountingReader:
    def __init__(self) -> None:
        self.reads = 0
        self.closed = False

    def read(self) -> int:
        self.reads += 1
        return self.reads * 10

    def close(self) -> None:
        self.closed = True


class Report(BaseModel):
    time: float
    value: int


def test_the_first_sample_only_sets_the_baseline_then_each_is_the_interval_since_the_last():
    reader = CountingReader()
    with Sampler(reader, lambda prev, cur: cur - prev) as sampler:
        assert sampler.sample() is None
        assert sampler.sample() == 10
    assert reader.closed


def test_run_keeps_a_fixed_schedule_and_stops_on_count_or_event():
    sampler = Sampler(CountingReader(), lambda prev, cur: (prev, cur))
    start = time.monotonic()
    assert list(sampler.run(0.05, 3)) == [(10, 20), (20, 30), (30, 40)]
    assert 0.14 <= time.monotonic() - start < 2.0
    stop = threading.Event()
    stop.set()
    assert list(sampler.run(0.05, None, stop)) == []
    with pytest.raises(InvalidInput, match="interval"):
        next(sampler.run(0, 1))
    with pytest.raises(InvalidInput, match="count"):
        next(sampler.run(1, 0))


def test_scrapes_within_max_age_share_one_reading():
    reader = CountingReader()
    shared = SharedReading(reader.read, max_age_s=60)
    assert shared.get()[0] == shared.get()[0] == 10 and reader.reads == 1
    fresh = SharedReading(reader.read, max_age_s=0)
    fresh.get()
    time.sleep(0.001)
    fresh.get()
    assert reader.reads == 3


def test_history_is_0600_streams_a_window_and_names_a_bad_line(tmp_path: Path):
    recordings = History(Report, "widget")
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as writer:
        for t in range(5):
            writer.append(Report(time=100 + t, value=t))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [r.value for r in recordings.stream(path, since=103)] == [3, 4]
    assert recordings.last_time(path) == 104
    with path.open("a") as f:
        f.write('{"time": 1}\n')
    with pytest.raises(InvalidInput, match=r"h.jsonl:6: not a widget report"):
        list(recordings.stream(path))
    with pytest.raises(NotFound, match="kvmkit widget sample --history"):
        recordings.last_time(tmp_path)  # a folder is not a recording


def test_history_lines_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(history_mod, "MAX_LINE", 64)
    path = tmp_path / "h.jsonl"
    path.write_text('{"time": 1, "value": 1}\n' + '{"time": 2, "value": ' + "1" * 100 + "}\n")
    with pytest.raises(InvalidInput, match="line longer than 64 bytes"):
        list(History(Report, "widget").stream(path))
