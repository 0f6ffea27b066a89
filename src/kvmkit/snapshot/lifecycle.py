"""Delete, discard, flatten and list: the snapshot operations that are one step each (create and revert have their
own modules)."""

from __future__ import annotations

import logging

from kvmkit.errors import Conflict
from kvmkit.joblog import job_log
from kvmkit.snapshot import snapshot_lock
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.drivers.base import Flattenable, InUse
from kvmkit.snapshot.drivers.registry import by_name, driver_for
from kvmkit.snapshot.guard import vm_lock
from kvmkit.snapshot.model import Snapshot, State, check_snapshot_name
from kvmkit.snapshot.ownership import whose
from kvmkit.virt.connection import connection, live_disks, lookup
from kvmkit.virt.host import require_local

log = logging.getLogger(__name__)


def discard(ctx: SnapshotContext, snap: Snapshot) -> int:
    """Delete whatever part of a snapshot exists, then drop its row; how many disk snapshots it removed.
    An object marked by another catalog is left alone (two catalogs raced for one name: it is the other's).
    A storage error leaves the row (the intent) in place for `recover`."""
    removed = 0
    for disk_snap in snap.disks:
        driver = by_name(disk_snap.driver, ctx.drivers)
        if driver.exists(disk_snap):
            verdict = whose(driver, disk_snap, ctx.catalog.catalog_id)
            if verdict.whose == "foreign":
                log.warning("%s belongs to kvmkit catalog %s, not this one (%s): left in place", disk_snap.handle,
                            verdict.owner, ctx.catalog.catalog_id)
                continue
            driver.delete(disk_snap)
            removed += 1
    assert snap.id is not None
    ctx.catalog.remove(snap.id)
    return removed


def delete(ctx: SnapshotContext, vm: str, name: str, wait_s: float = 0.0) -> Snapshot:
    """Delete a snapshot kvmkit made, every disk of it, logged as its own job."""
    with job_log(ctx.state_dir, "delete", vm, f"snapshot delete {name}"):
        return _delete(ctx, vm, name, wait_s)


def _delete(ctx: SnapshotContext, vm: str, name: str, wait_s: float = 0.0) -> Snapshot:
    check_snapshot_name(name)
    with connection(ctx.uri) as conn:
        dom = lookup(conn, vm)
        with vm_lock(ctx.state_dir, dom.UUIDString(), vm, wait_s), \
                snapshot_lock.deleting(ctx.state_dir, dom.UUIDString(), name, vm):  # not while it is backed up
            snap = ctx.catalog.get(dom.UUIDString(), name, vm)
            snap.refuse_alone("delete")
            require_local(conn, live_disks(dom))
            for disk_snap in snap.disks:
                driver = by_name(disk_snap.driver, ctx.drivers)
                reason = driver.in_use(disk_snap) if isinstance(driver, InUse) else None
                if reason:
                    raise Conflict(f"snapshot {name} of VM {vm} is in use: {reason}")
                verdict = whose(driver, disk_snap, ctx.catalog.catalog_id)
                if verdict.whose == "foreign":
                    raise Conflict(f"snapshot {name} of VM {vm}: {disk_snap.handle} was made by another kvmkit "
                                   f"catalog ({verdict.owner}), not this one; delete it from there")
            snap.state = State.DELETING
            ctx.catalog.update(snap)
            for disk_snap in snap.disks:
                by_name(disk_snap.driver, ctx.drivers).delete(disk_snap)
            assert snap.id is not None
            ctx.catalog.remove(snap.id)
            return snap


def flatten(ctx: SnapshotContext, vm: str, wait_s: float = 0.0) -> list[str]:
    """Copy parent data into disks that a revert by clone left as clones (O(size)): their base snapshots are
    then free to delete. Returns the targets flattened."""
    done = []
    with connection(ctx.uri) as conn:
        dom = lookup(conn, vm)
        with vm_lock(ctx.state_dir, dom.UUIDString(), vm, wait_s):
            for disk in live_disks(dom):
                driver = driver_for(disk, ctx.drivers)
                if isinstance(driver, Flattenable) and driver.flatten_if_clone(disk):
                    done.append(disk.target)
    return done


def list_snapshots(ctx: SnapshotContext, vm: str | None = None) -> list[Snapshot]:
    if vm is None:
        return ctx.catalog.list()
    with connection(ctx.uri) as conn:
        return ctx.catalog.list(lookup(conn, vm).UUIDString())
