"""Taking snapshots as a user-facing step: recover pass, create (several VMs side by side), back up — the one
sequence behind `kvmkit snapshot create` and `kvmkit schedule run`, so both repair interrupted work first and
both back up outside the freeze the same way."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmkit.config import Settings
from kvmkit.errors import KvmkitError
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.create import create
from kvmkit.snapshot.model import Snapshot
from kvmkit.snapshot.recover import RecoverAction, recover

if TYPE_CHECKING:
    from kvmkit.backup.model import BackupManifest

MAX_CONCURRENT_VMS = 8


@dataclass
class Outcome:
    """What happened to one VM: a snapshot or the error that stopped it; its backup or the backup's error."""

    vm: str
    snapshot: Snapshot | None = None
    error: KvmkitError | None = None
    backup: BackupManifest | None = None
    backup_error: KvmkitError | None = None


def recover_pass(ctx: SnapshotContext) -> list[RecoverAction]:
    """The cheap recover pass: only interrupted operations, and only when there are any."""
    return recover(ctx)


def take(ctx: SnapshotContext, settings: Settings, vms: list[str], name: str | None = None, *,
         crash_consistent: bool = False, wait_s: float = 0.0, allow_full_copy: bool = False,
         backup: bool = False, target: str | None = None,
         on_created: Callable[[Snapshot], None] | None = None,
         on_backed_up: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Recover, snapshot every VM concurrently (each with its own freeze and its own drivers), then back the
    ready ones up one after another. Failures are per VM, in the outcomes; nothing here raises for one VM.
    on_created/on_backed_up: told of each snapshot once all are taken, and of each backup as it finishes."""
    recover_pass(ctx)

    def one(vm: str) -> Outcome:
        try:
            return Outcome(vm, snapshot=create(ctx.fresh() if len(vms) > 1 else ctx, vm, name,
                                               crash_consistent=crash_consistent, wait_s=wait_s,
                                               allow_full_copy=allow_full_copy))
        except KvmkitError as exc:
            return Outcome(vm, error=exc)

    if len(vms) == 1:
        outcomes = [one(vms[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT_VMS, len(vms))) as pool:
            outcomes = list(pool.map(one, vms))
    for outcome in outcomes:
        if outcome.snapshot is not None and on_created is not None:
            on_created(outcome.snapshot)
    if backup:
        for outcome in outcomes:
            if outcome.snapshot is not None:
                back_up(settings, outcome, target)
                if on_backed_up is not None and outcome.backup is not None:
                    on_backed_up(outcome)
    return outcomes


def back_up(settings: Settings, outcome: Outcome, target: str | None = None) -> None:
    """Back the outcome's snapshot up, after the thaw; a failed backup leaves the snapshot ready."""
    from kvmkit.backup.create import backup_snapshot  # the backup package is only loaded when it is used

    assert outcome.snapshot is not None
    try:
        outcome.backup = backup_snapshot(settings, outcome.snapshot, target)
    except KvmkitError as exc:
        outcome.backup_error = exc
