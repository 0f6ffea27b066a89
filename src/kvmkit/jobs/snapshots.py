"""Snapshot jobs: recover pass, create (several VMs side by side), back up — the one sequence behind
`kvmkit snapshot create`, `kvmkit schedule run` and `--backup`, so every entry repairs interrupted work first,
backs up outside the freeze the same way, and leaves the same trace of every failure (a health event)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kvmkit.config import Settings
from kvmkit.errors import KvmkitError
from kvmkit.jobs.backups import back_up
from kvmkit.jobs.outcome import Outcome, record_failure
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.create import create
from kvmkit.snapshot.model import Snapshot
from kvmkit.snapshot.recover import RecoverAction, recover

MAX_CONCURRENT_VMS = 8


def recover_pass(ctx: SnapshotContext) -> list[RecoverAction]:
    """The cheap recover pass: only interrupted operations, and only when there are any."""
    return recover(ctx)


def take(ctx: SnapshotContext, settings: Settings, vms: list[str], name: str | None = None, *,
         crash_consistent: bool = False, wait_s: float = 0.0, allow_full_copy: bool = False,
         backup: bool = False, target: str | None = None,
         on_created: Callable[[Snapshot], None] | None = None,
         on_backed_up: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Recover, snapshot every VM concurrently (each with its own freeze and its own drivers), then back the
    ready ones up one after another. Failures are per VM, in the outcomes, and each is a health event; nothing
    here raises for one VM. on_created/on_backed_up: told of each snapshot once all are taken, and of each
    backup as it finishes."""
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
        if outcome.error is not None:
            record_failure(settings.state_dir, "snapshot", outcome.vm, outcome.error)
        elif outcome.snapshot is not None and on_created is not None:
            on_created(outcome.snapshot)
    if backup:
        back_up_each([o for o in outcomes if o.snapshot is not None], settings, target, on_backed_up)
    return outcomes


def back_up_each(outcomes: list[Outcome], settings: Settings, target: str | None,
                 on_backed_up: Callable[[Outcome], None] | None = None) -> None:
    """Back each outcome's snapshot up, one after another (they share the target's bandwidth); a failure stays in
    its outcome (back_up recorded its health event) and the others go on."""
    for outcome in outcomes:
        assert outcome.snapshot is not None
        try:
            outcome.backup = back_up(settings, outcome.snapshot, target)
        except KvmkitError as exc:  # the snapshot stays ready
            outcome.backup_error = exc
            continue
        if on_backed_up is not None:
            on_backed_up(outcome)


def take_group(ctx: SnapshotContext, settings: Settings, group: str, vms: list[str], name: str | None = None, *,
               crash_consistent: bool = False, wait_s: float = 0.0, allow_full_copy: bool = False,
               backup: bool = False, target: str | None = None,
               on_created: Callable[[Snapshot], None] | None = None,
               on_backed_up: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """A consistency group's snapshot (one instant across its VMs), after the recover pass; all or nothing, so a
    failure is every member VM's health event and is raised. With backup, each member's snapshot is then backed
    up as that VM's backup under the group snapshot's name: restoring every member from that name gives back the
    one instant (a member whose backup failed says so in its outcome)."""
    from kvmkit.snapshot.group import create_group

    recover_pass(ctx)
    try:
        snaps = create_group(ctx, group, vms, name, crash_consistent=crash_consistent, wait_s=wait_s,
                             allow_full_copy=allow_full_copy)
    except KvmkitError as exc:
        for vm in vms or ctx.catalog.group_vms(group) or [group]:
            record_failure(settings.state_dir, "snapshot", vm, exc)
        raise
    outcomes = [Outcome(s.vm, snapshot=s) for s in snaps]
    for snap in snaps if on_created is not None else []:
        on_created(snap)
    if backup:
        back_up_each(outcomes, settings, target, on_backed_up)
    return outcomes
