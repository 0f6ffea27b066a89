"""Backup jobs: one snapshot backed up to a target, its failure recorded wherever the job came from."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmkit.config import Settings
from kvmkit.errors import KvmkitError
from kvmkit.jobs.outcome import record_failure

if TYPE_CHECKING:
    from kvmkit.backup.model import BackupManifest
    from kvmkit.snapshot.model import Snapshot


def back_up(settings: Settings, snapshot: Snapshot, target: str | None = None,
            progress: Callable[[int], None] | None = None) -> BackupManifest:
    """Back the snapshot up (after the thaw); a failure is a health event and raised as it came."""
    from kvmkit.backup import create  # the backup package is only loaded when it is used

    try:
        if progress is None:
            return create.backup_snapshot(settings, snapshot, target)
        return create.backup_snapshot(settings, snapshot, target, progress)
    except KvmkitError as exc:
        record_failure(settings.state_dir, "backup", snapshot.vm, exc)
        raise
