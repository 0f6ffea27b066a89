"""What a job left behind: the outcome records entries print, and the one place a failure becomes a health event
(so `kvmkit_snapshot_failures_total` rises whichever entry ran the job: CLI, schedule, --backup)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kvmkit.errors import KvmkitError
from kvmkit.health import events

if TYPE_CHECKING:
    from kvmkit.backup.model import BackupManifest
    from kvmkit.snapshot.model import Snapshot

JobKind = Literal["snapshot", "backup", "verify"]
_EVENT = {"snapshot": events.EventKind.SNAPSHOT_FAILURE, "backup": events.EventKind.BACKUP_FAILURE,
          "verify": events.EventKind.VERIFY_FAILURE}


@dataclass
class Outcome:
    """What happened to one VM: a snapshot or the error that stopped it; its backup or the backup's error."""

    vm: str
    snapshot: Snapshot | None = None
    error: KvmkitError | None = None
    backup: BackupManifest | None = None
    backup_error: KvmkitError | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.backup_error is not None


def record_failure(state_dir: Path, kind: JobKind, vm: str, exc: BaseException) -> None:
    """The health event of a failed job; never raises (a full disk must not replace the job's own error)."""
    events.record(state_dir, _EVENT[kind], vm, exc)
