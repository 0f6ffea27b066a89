"""Revert: stage every disk's snapshot beside it, swap them all, then commit — journaled, so an interrupted
revert is finished (every disk swapped) or undone (not all were) by `recover`."""

from __future__ import annotations

import time

from kvmkit.errors import Conflict, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.joblog import job_log
from kvmkit.snapshot.context import GuestAgent, SnapshotContext
from kvmkit.snapshot.drivers.base import RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.registry import by_name
from kvmkit.snapshot.guard import vm_lock
from kvmkit.snapshot.journal import HandleMove, RevertJournal
from kvmkit.snapshot.model import Snapshot, State, check_snapshot_name
from kvmkit.virt.connection import Domain, connection, is_running, live_disks, lookup, power_off, start
from kvmkit.virt.disks import Disk
from kvmkit.virt.host import require_local


def revert(ctx: SnapshotContext, vm: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
           stop_timeout_s: float = 10.0, rollback: bool = False) -> Snapshot:
    """Put every disk back to the snapshot (the VM shut off, or stopped with force_stop), logged as its own job."""
    with job_log(ctx.state_dir, "revert", vm, f"snapshot revert {name}"):
        return _revert(ctx, vm, name, force_stop=force_stop, wait_s=wait_s, stop_timeout_s=stop_timeout_s,
                       rollback=rollback)


def _revert(ctx: SnapshotContext, vm: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
           stop_timeout_s: float = 10.0, rollback: bool = False) -> Snapshot:
    """Put every disk back to the snapshot: the VM shut off (or stopped with force_stop), all-or-nothing."""
    check_snapshot_name(name)
    with connection(ctx.uri) as conn:
        dom = lookup(conn, vm)
        vm_uuid = dom.UUIDString()
        with vm_lock(ctx.state_dir, vm_uuid, vm, wait_s):
            snap = ctx.catalog.get(vm_uuid, name, vm)
            snap.refuse_alone("revert")
            if snap.state is not State.READY:
                raise Conflict(f"snapshot {name} of VM {vm} is {snap.state.value}, not ready")
            current = {d.target: d for d in live_disks(dom)}
            require_local(conn, current.values())
            missing = [d.target for d in snap.disks if d.target not in current]
            if missing:
                raise Conflict(f"VM {vm} no longer has disk(s) {', '.join(missing)} of snapshot {name}")
            was_running = is_running(dom)
            if was_running and not force_stop:
                raise Conflict(f"VM {vm} is running; shut it down first or pass --force-stop")
            had_agent = was_running and ctx.guest.ping(dom)
            if was_running:
                power_off(dom, stop_timeout_s)
            swap_all(ctx, vm_uuid, snap, current, RevertOptions(rollback=rollback))
            if was_running:
                start(dom)
                if had_agent:
                    _wait_agent(ctx.guest, dom, timeout_s=120)
            return snap


def swap_all(ctx: SnapshotContext, vm_uuid: str, snap: Snapshot, current: dict[str, Disk],
             options: RevertOptions) -> None:
    """Stage every disk, swap them all, then commit: all-or-nothing across disks, journaled for recover."""
    staged: list[StagedRevert] = []
    entry = ctx.catalog.journal_add(vm_uuid, RevertJournal(snapshot=snap.name, phase="staging"))
    try:
        for disk_snap in snap.disks:
            driver = by_name(disk_snap.driver, ctx.drivers)
            staged.append(driver.stage_revert(current[disk_snap.target], disk_snap, options))
            ctx.catalog.journal_update(entry, RevertJournal(snapshot=snap.name, phase="staged", staged=staged))
        try:
            for item in staged:
                by_name(item.driver, ctx.drivers).swap(item)
                failpoint("revert-mid-swap")
        except BaseException:
            for item in reversed(staged):
                by_name(item.driver, ctx.drivers).undo(item)
            raise
    except BaseException:
        for item in staged:
            by_name(item.driver, ctx.drivers).undo(item)
        ctx.catalog.journal_done(entry)
        raise
    ctx.catalog.journal_update(entry, RevertJournal(snapshot=snap.name, phase="swapped", staged=staged))
    for item in staged:
        by_name(item.driver, ctx.drivers).commit(item)
    move_handles(ctx, vm_uuid, [move for item in staged for move in item.data.moves()])
    ctx.catalog.journal_done(entry)


def move_handles(ctx: SnapshotContext, vm_uuid: str, moves: list[HandleMove]) -> None:
    """A revert by clone leaves the older snapshots on a renamed base image: point their rows there."""
    if not moves:
        return
    for snap in ctx.catalog.list(vm_uuid):
        changed = False
        for disk_snap in snap.disks:
            for move in moves:
                if disk_snap.handle.startswith(move.old_prefix):
                    disk_snap.handle = move.new_prefix + disk_snap.handle.removeprefix(move.old_prefix)
                    changed = True
        if changed:
            ctx.catalog.update(snap)


def _wait_agent(guest: GuestAgent, dom: Domain, timeout_s: float) -> None:
    """After a --force-stop revert: the VM is back when its agent answers again (the agent has no ready event)."""
    deadline = time.monotonic() + timeout_s
    while not guest.ping(dom, timeout_s=1):
        if time.monotonic() > deadline:
            raise OperationFailed(f"VM {dom.name()} was reverted and started, but its agent did not answer "
                                  f"within {timeout_s:.0f} s")
        time.sleep(0.25)
