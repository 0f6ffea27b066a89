"""The outcome log: failures the catalog cannot show, kept for the health metrics.

A failed snapshot leaves no catalog row (its intent is dropped after cleanup) and a failed verify changes nothing,
so the operations append one JSON line here instead: `<state_dir>/health/events.jsonl` (0600, folder 0700). The log
is bounded: past MAX_BYTES it is renamed to `events.jsonl.1` (one generation kept), so counters read from it reset
like a restarted process's would, which `rate()`/`increase()` handle. Appending never raises: a full disk must not
turn a snapshot's failure report into a different error.
"""

from __future__ import annotations

import logging
import os
import stat
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvmkit import fsat

log = logging.getLogger(__name__)
MAX_BYTES = 1 << 20
MAX_LINE = 4096


class EventKind(StrEnum):
    SNAPSHOT_FAILURE = "snapshot_failure"
    BACKUP_FAILURE = "backup_failure"
    VERIFY_FAILURE = "verify_failure"


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ts: datetime
    kind: EventKind
    vm: str = Field(max_length=128)
    reason: str = Field(max_length=32, pattern=r"^[a-z_]+$")  # the error class: bounded label values


def reason_of(exc: BaseException) -> str:
    """`OperationFailed` → `operation_failed`: the class, never the message (labels must stay few)."""
    name = type(exc).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")[:32] or "unknown"


def log_path(state_dir: Path) -> Path:
    return state_dir / "health" / "events.jsonl"


def record(state_dir: Path, kind: EventKind, vm: str, exc: BaseException) -> None:
    path = log_path(state_dir)
    try:
        event = Event(ts=datetime.now(UTC), kind=kind, vm=vm[:128], reason=reason_of(exc))
        fsat.private_dirs(path.parent)
        if path.exists() and path.stat().st_size > MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (event.model_dump_json() + "\n").encode())  # one write: lines never interleave
        finally:
            os.close(fd)
    except (OSError, ValidationError) as err:
        log.warning("health event not recorded", extra={"vm": vm, "kind": kind.value, "error": str(err)})


def read(state_dir: Path) -> tuple[list[Event], int]:
    """(events, malformed lines) from the older generation and the current log, regular files only."""
    events: list[Event] = []
    malformed = 0
    path = log_path(state_dir)
    for part in (path.with_name(path.name + ".1"), path):
        try:
            fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                continue
            for raw in fh.read(2 * MAX_BYTES + MAX_LINE).splitlines():
                try:
                    if len(raw) > MAX_LINE:
                        raise ValueError("line too long")
                    events.append(Event.model_validate_json(raw))
                except (ValueError, ValidationError):
                    malformed += 1
    return events, malformed
