"""Revert and delete of a consistency group: every member VM, all-or-nothing.

Revert stages every disk of every VM, swaps them all, and only then marks every VM's journal entry `swapped` — in
one catalog transaction. A crash before that transaction leaves every entry `staged`, so `recover` undoes every
VM; after it, `recover` commits every VM. Either way the VMs never end up at different instants. One set of
drivers and one revert token serve the whole group, so an `rbd.Group` spanning the VMs is rolled back once.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from kvmkit.errors import Conflict, NotFound
from kvmkit.failpoint import failpoint
from kvmkit.snapshot import snapshot_lock
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.drivers.base import InUse, RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.registry import by_name
from kvmkit.snapshot.guard import vm_lock
from kvmkit.snapshot.journal import RevertJournal
from kvmkit.snapshot.model import Snapshot, State, check_snapshot_name
from kvmkit.snapshot.ownership import whose
from kvmkit.snapshot.revert import _wait_agent, move_handles
from kvmkit.virt.connection import Domain, connection, is_running, live_disks, lookup_uuid, power_off, start
from kvmkit.virt.disks import Disk
from kvmkit.virt.host import require_local


@dataclass
class _Held:
    snap: Snapshot
    dom: Domain
    current: dict[str, Disk]
    was_running: bool = False
    had_agent: bool = False
    entry: int = 0
    staged: list[StagedRevert] | None = None


def members(ctx: SnapshotContext, group: str, name: str) -> list[Snapshot]:
    """The rows of one group snapshot, one per VM; NotFound if the group has no snapshot of that name."""
    check_snapshot_name(group)
    check_snapshot_name(name)
    rows = [s for s in ctx.catalog.list(group=group) if s.name == name]
    if not rows:
        raise NotFound(f"group {group} has no snapshot named {name!r}")
    return sorted(rows, key=lambda s: s.vm_uuid)


def _lock_all(ctx: SnapshotContext, conn: object, rows: list[Snapshot], stack: ExitStack,
              wait_s: float) -> list[tuple[Snapshot, Domain]]:
    held = []
    for snap in rows:  # uuid order, as create locks them
        dom = lookup_uuid(conn, snap.vm_uuid)  # type: ignore[arg-type]
        if dom is None:
            raise Conflict(f"group snapshot {snap.name}: VM {snap.vm} ({snap.vm_uuid}) no longer exists")
        stack.enter_context(vm_lock(ctx.state_dir, snap.vm_uuid, snap.vm, wait_s))
        held.append((snap, dom))
    return held


def revert_group(ctx: SnapshotContext, group: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
                 stop_timeout_s: float = 10.0, rollback: bool = False) -> list[Snapshot]:
    """Put every disk of every VM of the group back to the group snapshot, all-or-nothing across the VMs."""
    rows = members(ctx, group, name)
    with connection(ctx.uri) as conn, ExitStack() as stack:
        held: list[_Held] = []
        for snap, dom in _lock_all(ctx, conn, rows, stack, wait_s):
            snap = ctx.catalog.get(snap.vm_uuid, name, snap.vm)  # read again under the lock
            if snap.state is not State.READY:
                raise Conflict(f"snapshot {name} of VM {snap.vm} is {snap.state.value}, not ready")
            current = {d.target: d for d in live_disks(dom)}
            require_local(conn, current.values())
            missing = [d.target for d in snap.disks if d.target not in current]
            if missing:
                raise Conflict(f"VM {snap.vm} no longer has disk(s) {', '.join(missing)} of snapshot {name}")
            h = _Held(snap, dom, current, was_running=is_running(dom))
            if h.was_running and not force_stop:
                raise Conflict(f"VM {snap.vm} is running; shut every VM of group {group} down first or pass "
                               "--force-stop")
            held.append(h)
        for h in held:
            h.had_agent = h.was_running and ctx.guest.ping(h.dom)
        for h in held:
            if h.was_running:
                power_off(h.dom, stop_timeout_s)
        _swap_group(ctx, held, RevertOptions(rollback=rollback))
        for h in held:
            if h.was_running:
                start(h.dom)
        for h in held:
            if h.had_agent:
                _wait_agent(ctx.guest, h.dom, timeout_s=120)
        return [h.snap for h in held]


def _swap_group(ctx: SnapshotContext, held: list[_Held], options: RevertOptions) -> None:
    """Stage every disk of every VM, swap them all, mark all swapped at once, commit (see the module docstring)."""
    try:
        for h in held:
            h.staged = []
            h.entry = ctx.catalog.journal_add(h.snap.vm_uuid, RevertJournal(snapshot=h.snap.name, phase="staging"))
            for disk_snap in h.snap.disks:
                driver = by_name(disk_snap.driver, ctx.drivers)
                h.staged.append(driver.stage_revert(h.current[disk_snap.target], disk_snap, options))
                ctx.catalog.journal_update(h.entry, RevertJournal(snapshot=h.snap.name, phase="staged",
                                                                  staged=h.staged))
        try:
            for h in held:
                for item in h.staged or []:
                    by_name(item.driver, ctx.drivers).swap(item)
                failpoint("group-revert-mid-swap")
        except BaseException:
            for h in reversed(held):
                for item in reversed(h.staged or []):
                    by_name(item.driver, ctx.drivers).undo(item)
            raise
    except BaseException:
        for h in held:
            for item in h.staged or []:
                by_name(item.driver, ctx.drivers).undo(item)
            if h.entry:
                ctx.catalog.journal_done(h.entry)
        raise
    ctx.catalog.journal_update_many([(h.entry, RevertJournal(snapshot=h.snap.name, phase="swapped",
                                                             staged=h.staged or [])) for h in held])
    for h in held:
        for item in h.staged or []:
            by_name(item.driver, ctx.drivers).commit(item)
        move_handles(ctx, h.snap.vm_uuid, [move for item in h.staged or [] for move in item.data.moves()])
        ctx.catalog.journal_done(h.entry)


def delete_group(ctx: SnapshotContext, group: str, name: str, wait_s: float = 0.0) -> list[Snapshot]:
    """Delete every member of a group snapshot; checked for every VM before any is touched."""
    rows = members(ctx, group, name)
    with connection(ctx.uri) as conn, ExitStack() as stack:
        held = _lock_all(ctx, conn, rows, stack, wait_s)
        for snap, _ in held:
            stack.enter_context(snapshot_lock.deleting(ctx.state_dir, snap.vm_uuid, name, snap.vm))
        snaps = [ctx.catalog.get(snap.vm_uuid, name, snap.vm) for snap, _ in held]
        for snap in snaps:
            for disk_snap in snap.disks:
                driver = by_name(disk_snap.driver, ctx.drivers)
                reason = driver.in_use(disk_snap) if isinstance(driver, InUse) else None
                if reason:
                    raise Conflict(f"snapshot {name} of VM {snap.vm} is in use: {reason}")
                if whose(driver, disk_snap, ctx.catalog.catalog_id).whose == "foreign":
                    raise Conflict(f"snapshot {name} of VM {snap.vm}: {disk_snap.handle} was made by another "
                                   "kvmkit catalog, not this one; delete it from there")
        for snap in snaps:
            snap.state = State.DELETING
        ctx.catalog.update_many(snaps)
        for snap in snaps:
            for disk_snap in snap.disks:
                by_name(disk_snap.driver, ctx.drivers).delete(disk_snap)
            assert snap.id is not None
            ctx.catalog.remove(snap.id)
        return snaps
