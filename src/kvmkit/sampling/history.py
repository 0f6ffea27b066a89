"""Sample histories: one report per line (JSON), appended by `sample --history`, streamed back by `advise`,
`policy` and `enforce`, so that a day of 1 Hz samples never has to fit in memory at once.

The file names VMs, so it is created 0600. Everything read back is untrusted: each line is parsed strictly into
the report model, lines are bounded (MAX_LINE), only a regular file is read, and a bad line names its number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, Self, TypeVar

from pydantic import BaseModel, ValidationError

from kvmkit.errors import InvalidInput, NotFound

MAX_LINE = 4 << 20  # a report of ~1,000 VMs is ~1.5 MB: anything longer is not ours


ReportT = TypeVar("ReportT", bound=BaseModel)  # a report model with a `time` field (epoch seconds)


class HistoryWriter:
    """Appends reports; each line is flushed so that a reader (or a crash) sees whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InvalidInput(f"cannot append to history {path}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def append(self, report: BaseModel) -> None:
        self._file.write(report.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class History(Generic[ReportT]):
    """How one capability's recordings are read back: its report model, and what its messages call it."""

    def __init__(self, model: type[ReportT], capability: str) -> None:
        self.model = model
        self.capability = capability  # "congestion" → "not a congestion report", "kvmkit congestion sample"

    def _check(self, path: Path) -> None:
        if not path.is_file():
            hint = f"record one with `kvmkit {self.capability} sample --history FILE`"
            raise NotFound(f"history file {path} does not exist ({hint})")

    def stream(self, path: Path, since: float | None = None) -> Iterator[ReportT]:
        """Reports in file order, newer than `since` (epoch seconds) if given."""
        self._check(path)
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(iter(lambda: lines.readline(MAX_LINE), ""), 1):
                if not line.strip():
                    continue
                if not line.endswith("\n") and len(line) >= MAX_LINE:
                    raise InvalidInput(f"{path}:{number}: line longer than {MAX_LINE} bytes")
                try:
                    report = self.model.model_validate(json.loads(line))
                except (ValueError, ValidationError) as exc:
                    first = str(exc).splitlines()[0]
                    raise InvalidInput(f"{path}:{number}: not a {self.capability} report: {first}") from None
                if since is None or report.time >= since:  # type: ignore[attr-defined]
                    yield report

    def last_time(self, path: Path) -> float:
        """Time of the last report, from the file's tail (for a window relative to the recording's end)."""
        self._check(path)
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
