"""The sample history: one IntervalReport per line (JSON), appended by `sample --history`, streamed back by
`advise`, `policy` and `enforce` so that a day of 1 Hz samples never has to fit in memory at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from kvmkit.congestion.model import IntervalReport
from kvmkit.errors import InvalidInput, NotFound


class HistoryWriter:
    """Appends reports; each line is flushed so that a reader (or a crash) sees whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot append to history {path}: {exc.strerror}") from None

    def append(self, report: IntervalReport) -> None:
        self._file.write(report.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(path: Path, since: float | None = None) -> Iterator[IntervalReport]:
    """Reports in file order, newer than `since` (epoch seconds) if given; a bad line names its number."""
    if not path.exists():
        hint = "record one with `kvmkit congestion sample --history FILE`"
        raise NotFound(f"history file {path} does not exist ({hint})")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                report = IntervalReport.model_validate(json.loads(line))
            except (ValueError, ValidationError) as exc:
                first = str(exc).splitlines()[0]
                raise InvalidInput(f"{path}:{number}: not a congestion report: {first}") from None
            if since is None or report.time >= since:
                yield report


def last_time(path: Path) -> float:
    """Time of the last report, read from the file's tail (for `--window` relative to the recording's end)."""
    with path.open("rb") as raw:
        size = raw.seek(0, os.SEEK_END)
        raw.seek(max(0, size - 65536))
        tail = raw.read().decode(errors="replace").strip().splitlines()
    for line in reversed(tail):
        try:
            return float(json.loads(line)["time"])
        except (ValueError, KeyError, TypeError):
            continue
    raise InvalidInput(f"{path}: no complete report in its last 64 KiB")
