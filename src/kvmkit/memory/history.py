"""Memory reports as JSON lines: appended by `sample --history`, streamed back by advise and policy, so a day of
1 Hz samples never has to fit in memory. Each line is parsed strictly (a report model); a bad line names itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from kvmkit.errors import InvalidInput, NotFound
from kvmkit.memory.model import MemoryReport

MAX_LINE = 4 << 20  # one report of ~1,000 VMs is ~1.5 MB: anything longer is not ours


class HistoryWriter:
    """Appends reports (file 0600: it names VMs); each line is flushed so a reader or a crash sees whole lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InvalidInput(f"cannot append to history {path}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def append(self, report: MemoryReport) -> None:
        self._file.write(report.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def stream(path: Path, since: float | None = None) -> Iterator[MemoryReport]:
    """Reports in file order, newer than `since` (epoch seconds) if given."""
    if not path.is_file():
        raise NotFound(f"history file {path} does not exist (record one with `kvmkit memory sample --history FILE`)")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(iter(lambda: lines.readline(MAX_LINE), ""), 1):
            if not line.strip():
                continue
            if not line.endswith("\n") and len(line) >= MAX_LINE:
                raise InvalidInput(f"{path}:{number}: line longer than {MAX_LINE} bytes")
            try:
                report = MemoryReport.model_validate(json.loads(line))
            except (ValueError, ValidationError) as exc:
                first = str(exc).splitlines()[0]
                raise InvalidInput(f"{path}:{number}: not a memory report: {first}") from None
            if since is None or report.time >= since:
                yield report


def last_time(path: Path) -> float:
    """Time of the last report, from the file's tail (for a window relative to the recording's end)."""
    if not path.is_file():
        raise NotFound(f"history file {path} does not exist (record one with `kvmkit memory sample --history FILE`)")
    with path.open("rb") as raw:
        size = raw.seek(0, os.SEEK_END)
        raw.seek(max(0, size - MAX_LINE))
        tail = raw.read().decode(errors="replace").strip().splitlines()
    for line in reversed(tail):
        try:
            return float(json.loads(line)["time"])
        except (ValueError, KeyError, TypeError):
            continue
    raise InvalidInput(f"{path}: no complete report in its last {MAX_LINE} bytes")
