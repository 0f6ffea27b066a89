"""The snapshot catalog read for health, never locked: a read-only SQLite connection (`mode=ro`, query_only).

In WAL mode a reader takes no lock a writer waits on, so a scrape never delays a freeze. Rows are untrusted input:
each is parsed by a strict, bounded model; a malformed row is skipped and counted, not trusted.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_ROWS = 1_000_000  # a bound on what one read may hold in memory (a catalog row here is ~200 bytes)
COLUMNS = "vm, vm_uuid, name, created, mode, state, freeze_ms, total_ms"


class SnapshotRecord(BaseModel):
    """The fields health needs from one catalog row."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vm: str = Field(max_length=128)
    vm_uuid: str = Field(max_length=64)
    name: str = Field(max_length=64)
    created: datetime
    mode: str = Field(max_length=16)
    state: str = Field(max_length=16)
    freeze_ms: float | None = Field(default=None, ge=0)
    total_ms: float | None = Field(default=None, ge=0)

    @property
    def finished_ts(self) -> float:
        """When the snapshot became ready (Unix time): created + its total duration. The catalog stores naive
        local times, which `timestamp()` reads as local (no per-row time zone conversion: scrapes stay cheap)."""
        return self.created.timestamp() + (self.total_ms or 0) / 1000


class JournalRecord(BaseModel):
    """An unfinished multi-step operation (revert swap, overlay): recover's work if its VM is idle."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vm_uuid: str = Field(max_length=64)
    created: datetime


def read_catalog(path: Path, max_rows: int = MAX_ROWS) -> tuple[list[SnapshotRecord], list[JournalRecord], int]:
    """(snapshots, journal entries, malformed rows) from the catalog at `path`; empty when there is none yet."""
    if not path.is_file():
        return [], [], 0
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=1.0)
    try:
        db.execute("PRAGMA query_only = 1")
        rows = db.execute(f"SELECT {COLUMNS} FROM snapshots LIMIT ?", (max_rows,)).fetchall()
        journal_rows = db.execute("SELECT vm_uuid, created FROM journal LIMIT ?", (max_rows,)).fetchall()
    except sqlite3.DatabaseError:
        return [], [], 0  # not a catalog (yet): nothing to report
    finally:
        db.close()
    records, journal, malformed = [], [], 0
    keys = [c.strip() for c in COLUMNS.split(",")]
    for row in rows:
        try:
            records.append(SnapshotRecord.model_validate(dict(zip(keys, row, strict=True))))
        except ValidationError:
            malformed += 1
    for row in journal_rows:
        try:
            journal.append(JournalRecord(vm_uuid=row[0], created=row[1]))
        except ValidationError:
            malformed += 1
    return records, journal, malformed


def newest_created(path: Path) -> datetime | None:
    records, _, _ = read_catalog(path)
    if not records:
        return None
    return max(r.created if r.created.tzinfo else r.created.astimezone() for r in records)
