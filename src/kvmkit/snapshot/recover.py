"""`kvmkit snapshot recover`: make the catalog and the storage agree again after a crash.

Cheap pass (run at the start of every snapshot command): rows left `creating`/`deleting` and journal entries
whose VM lock is free are finished or undone, and a guest that such an operation left frozen or paused is thawed.
Full pass (the command itself) also deletes this catalog's own orphan snapshots and drops rows whose snapshots no
longer exist on the storage. A kvmkit-named snapshot that another catalog made (`foreign`) or that carries no
catalog id (`unknown`, see ownership.py) is only reported — unless asked to adopt it (mark it as ours and give it
a row) or to purge it. Journal entries are read back as the typed models of
`snapshot/journal.py`; one that does not parse is reported and left in place, never guessed at.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel

from kvmkit.errors import Conflict, KvmkitError, NotFound
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.drivers.base import BarrierSnapshots, Ownership, StorageDriver
from kvmkit.snapshot.drivers.registry import by_name, driver_for
from kvmkit.snapshot.guard import vm_lock
from kvmkit.snapshot.journal import JournalEntry, OverlayJournal, RevertJournal
from kvmkit.snapshot.lifecycle import discard
from kvmkit.snapshot.model import SNAPSHOT_NAME_RE, DiskSnapshot, Mode, Snapshot, State
from kvmkit.snapshot.ownership import whose
from kvmkit.snapshot.revert import move_handles
from kvmkit.virt.connection import Connection, connection, domains, is_active, is_paused, live_disks, lookup_uuid
from kvmkit.virt.connection import resume as resume_domain
from kvmkit.virt.disks import Disk

log = logging.getLogger(__name__)


class RecoverAction(BaseModel):
    vm: str
    action: str
    detail: str
    handle: str | None = None  # a snapshot found on the storage and not in this catalog
    whose: str | None = None  # ours | foreign | unknown (ownership.py)
    owner: str | None = None  # the catalog id on it, if any


StrayPolicy = Literal["report", "adopt", "purge"]


def recover(ctx: SnapshotContext, *, full: bool = False, strays: StrayPolicy = "report",
            only_vm: str | None = None, dry_run: bool = False) -> list[RecoverAction]:
    """strays: what the full pass does with kvmkit snapshots another catalog made or none marked — report them
    (default), adopt them (mark them as this catalog's and give them rows) or purge them (delete).
    only_vm: the full pass looks at that domain alone (rows of vanished VMs are then left for a full run).
    dry_run: the same findings, each action worded "would …", and nothing changed (catalog, journal, storage,
    guests)."""
    actions: list[RecoverAction] = []
    stale = ctx.catalog.list(states=(State.CREATING, State.DELETING))
    journal = ctx.catalog.journal()
    vm_uuids = {s.vm_uuid for s in stale} | {entry.vm_uuid for entry in journal}
    if not vm_uuids and not full:
        return actions
    with connection(ctx.uri) as conn:
        for vm_uuid in sorted(vm_uuids):
            label = next((s.vm for s in stale if s.vm_uuid == vm_uuid), vm_uuid)
            try:
                with vm_lock(ctx.state_dir, vm_uuid, label):
                    actions += _repair_vm(ctx, conn, vm_uuid, label, dry_run)
            except Conflict:
                continue  # an operation is running on that VM right now: not stale
        if full:
            actions += _full_pass(ctx, conn, strays, only_vm, dry_run)
    if dry_run:
        return actions
    for action in actions:
        log.info("recover: %s %s: %s", action.vm, action.action, action.detail)
    return actions


def _repair_vm(ctx: SnapshotContext, conn: Connection, vm_uuid: str, label: str,
               dry_run: bool = False) -> list[RecoverAction]:
    actions = []
    for snap in ctx.catalog.list(vm_uuid, states=(State.CREATING, State.DELETING)):
        removed = len(snap.disks) if dry_run else discard(ctx, snap)
        verb = ("would discard half-made" if dry_run else "discarded half-made") if snap.state is State.CREATING \
            else ("would finish deleting" if dry_run else "finished deleting")
        actions.append(RecoverAction(vm=snap.vm, action=verb, detail=f"snapshot {snap.name}: {removed} disk "
                                                                     f"snapshot(s) removed, row dropped"))
    for entry in ctx.catalog.journal(vm_uuid):
        if dry_run:
            actions.append(RecoverAction(vm=label, action=f"would finish interrupted {entry.op}",
                                         detail=f"journal entry {entry.id}"))
            continue
        actions.append(_finish_entry(ctx, conn, vm_uuid, label, entry))
    actions += _unstick_guest(ctx, conn, vm_uuid, label, dry_run)
    return actions


def _finish_entry(ctx: SnapshotContext, conn: Connection, vm_uuid: str, label: str,
                  entry: JournalEntry) -> RecoverAction:
    payload = entry.payload
    if isinstance(payload, OverlayJournal):
        action = _finish_overlay(ctx, conn, vm_uuid, label, payload)
    elif isinstance(payload, RevertJournal):
        action = _finish_revert(ctx, vm_uuid, label, payload)
    else:  # damaged: what it describes is unknown, so nothing is done on its behalf
        return RecoverAction(vm=label, action="left unreadable journal entry",
                             detail=f"entry {entry.id} ({entry.op}): {entry.damage}")
    ctx.catalog.journal_done(entry.id)
    return action


def _finish_revert(ctx: SnapshotContext, vm_uuid: str, label: str, journal: RevertJournal) -> RecoverAction:
    if journal.phase == "swapped":
        for item in journal.staged:
            by_name(item.driver, ctx.drivers).commit(item)
        move_handles(ctx, vm_uuid, [move for item in journal.staged for move in item.data.moves()])
        detail = "every disk was swapped: committed"
    else:
        for item in journal.staged:
            by_name(item.driver, ctx.drivers).undo(item)
        detail = "interrupted before every disk was swapped: undone, disks as before"
    return RecoverAction(vm=label, action=f"revert to {journal.snapshot}", detail=detail)


def _finish_overlay(ctx: SnapshotContext, conn: Connection, vm_uuid: str, label: str,
                    journal: OverlayJournal) -> RecoverAction:
    """A crash between the overlay barrier and the commit: merge the overlays back so one image per disk remains."""
    dom = lookup_uuid(conn, vm_uuid)  # None: a transient domain whose QEMU ended, only its files are left to merge
    disks = [Disk(target=d.target, kind="file", format=d.format, source=d.source) for d in journal.disks]
    _unstick_guest(ctx, conn, vm_uuid, label)  # a block commit needs a running, not paused, guest
    driver = driver_for(disks[0], ctx.drivers) if disks else None
    if not isinstance(driver, BarrierSnapshots):
        return RecoverAction(vm=label, action="left overlay journal", detail=f"no driver merges overlays of {disks}")
    detail = driver.finish_barrier(conn, dom, disks, journal.tag, journal.mode)
    return RecoverAction(vm=label, action="committed overlays", detail=detail)


def _unstick_guest(ctx: SnapshotContext, conn: Connection, vm_uuid: str, label: str,
                   dry_run: bool = False) -> list[RecoverAction]:
    """The watchdog thaws within its deadline; this catches the case where it could not (e.g. it was killed too)."""
    dom = lookup_uuid(conn, vm_uuid)
    if dom is None or not is_active(dom):
        return []
    if is_paused(dom):
        if not dry_run:
            resume_domain(dom)
        return [RecoverAction(vm=label, action="would resume" if dry_run else "resumed",
                              detail="left paused by an interrupted snapshot")]
    try:
        if ctx.guest.freeze_status(dom) == "frozen":
            if not dry_run:
                ctx.guest.thaw(dom)
            return [RecoverAction(vm=label, action="would thaw" if dry_run else "thawed",
                                  detail="left frozen by an interrupted snapshot")]
    except KvmkitError:
        pass  # no agent: nothing can be frozen
    return []


def _full_pass(ctx: SnapshotContext, conn: Connection, strays: StrayPolicy,
               only_vm: str | None, dry_run: bool = False) -> list[RecoverAction]:
    actions = _vanished_vms(ctx, conn, dry_run) if only_vm is None else []
    for dom, vm_uuid, vm_name in domains(conn):
        if only_vm is not None and vm_name != only_vm:
            continue
        try:
            with vm_lock(ctx.state_dir, vm_uuid, vm_name):
                snaps = ctx.catalog.list(vm_uuid)
                known = {d.handle for s in snaps for d in s.disks}
                adopted: dict[str, list[DiskSnapshot]] = {}
                for disk in live_disks(dom):
                    try:
                        driver = driver_for(disk, ctx.drivers)
                    except KvmkitError:
                        continue
                    for handle in driver.owned(disk):
                        if handle not in known:
                            found = DiskSnapshot(target=disk.target, driver=driver.name, source=disk.source,
                                                 handle=handle)
                            action = _stray(ctx, driver, found, vm_name, strays, adopted, dry_run)
                            if action is not None:
                                actions.append(action)
                if dry_run:
                    actions += [action.model_copy(update={"action": action.action.replace("adopted", "would adopt")})
                                for found in adopted.values() for _, _, action in found]
                else:
                    actions += _adopt_rows(ctx, vm_uuid, vm_name, adopted)
                for snap in snaps:
                    missing = [d.handle for d in snap.disks if not by_name(d.driver, ctx.drivers).exists(d)]
                    if missing:  # a snapshot missing a disk is no snapshot: drop the rest of it too
                        if not dry_run:
                            discard(ctx, snap)
                        actions.append(RecoverAction(vm=vm_name, action="would drop dangling row" if dry_run
                                                     else "dropped dangling row",
                                                     detail=f"snapshot {snap.name}: missing {', '.join(missing)}"))
        except Conflict:
            continue
        except NotFound:
            continue  # the domain went away while we looked (transient VMs come and go)
        except KvmkitError as exc:  # e.g. its storage unreachable: leave it for the next run
            actions.append(RecoverAction(vm=vm_name, action="skipped", detail=str(exc)))
    return actions


def _stray(ctx: SnapshotContext, driver: StorageDriver, found: DiskSnapshot, vm: str, strays: StrayPolicy,
           adopted: dict[str, list[tuple[StorageDriver, DiskSnapshot, RecoverAction]]],
           dry_run: bool = False) -> RecoverAction | None:
    """A kvmkit-named snapshot with no row in this catalog: delete it only if it is ours, else as asked.
    None: kept for adoption, which `_adopt_rows` reports."""
    verdict = whose(driver, found, ctx.catalog.catalog_id)
    facts = {"vm": vm, "handle": found.handle, "whose": verdict.whose, "owner": verdict.owner}
    made_by = f"catalog {verdict.owner}" if verdict.owner else "no catalog id"
    if verdict.whose == "ours":
        if not dry_run:
            driver.delete(found)
        return RecoverAction(**facts, action="would delete orphan" if dry_run else "deleted orphan",
                             detail=found.handle)
    if strays == "purge":
        if not dry_run:
            driver.delete(found)
        return RecoverAction(**facts, action=f"{'would purge' if dry_run else 'purged'} {verdict.whose}",
                             detail=f"{found.handle} ({made_by})")
    if strays == "adopt":
        tag = driver.tag_of(found.handle) if isinstance(driver, Ownership) else None
        if tag is not None and SNAPSHOT_NAME_RE.match(tag):
            adopted.setdefault(tag, []).append((driver, found.model_copy(update={"owner": ctx.catalog.catalog_id}),
                                                RecoverAction(**facts, action=f"adopted {verdict.whose}",
                                                              detail=f"{found.handle} ({made_by})")))
            return None
    return RecoverAction(**facts, action=f"left {verdict.whose} snapshot",
                         detail=f"{found.handle} ({made_by}); not this catalog's: --adopt or --purge-foreign")


def _adopt_rows(ctx: SnapshotContext, vm_uuid: str, vm: str,
                adopted: dict[str, list[tuple[StorageDriver, DiskSnapshot, RecoverAction]]]) -> list[RecoverAction]:
    """One ready row per adopted snapshot name, then its objects marked as ours — in that order, so an object is
    never ours without a row (which would make it an orphan to delete). Mode crash: nothing tells whether the
    guest was frozen when it was taken."""
    actions = []
    for tag, found in sorted(adopted.items()):
        disks = sorted((snap for _, snap, _ in found), key=lambda d: d.target)
        try:
            ctx.catalog.insert(Snapshot(vm_uuid=vm_uuid, vm=vm, name=tag, created=ctx.clock(), mode=Mode.CRASH,
                                        state=State.READY, disks=disks))
        except Conflict as exc:
            actions += [action.model_copy(update={"action": "not adopted", "detail": f"{action.detail}: {exc}"})
                        for _, _, action in found]
            continue
        for driver, snap, action in found:
            assert isinstance(driver, Ownership)
            driver.set_owner(snap, ctx.catalog.catalog_id)
            actions.append(action)
    return actions


def _vanished_vms(ctx: SnapshotContext, conn: Connection, dry_run: bool = False) -> list[RecoverAction]:
    """Rows of VMs no longer defined: kept while any of their snapshots still exists (it may be all that is left
    of the VM), dropped when none does."""
    actions = []
    present = {vm_uuid for _, vm_uuid, _ in domains(conn)}
    for snap in ctx.catalog.list(states=(State.READY, State.ERROR)):
        if snap.vm_uuid in present:
            continue
        try:
            alive = any(by_name(d.driver, ctx.drivers).exists(d) for d in snap.disks)
        except KvmkitError as exc:
            actions.append(RecoverAction(vm=snap.vm, action="skipped", detail=str(exc)))
            continue
        if not alive:
            assert snap.id is not None
            if not dry_run:
                ctx.catalog.remove(snap.id)
            actions.append(RecoverAction(vm=snap.vm,
                                         action="would drop dangling row" if dry_run else "dropped dangling row",
                                         detail=f"snapshot {snap.name}: VM {snap.vm_uuid} and its snapshots are gone"))
    return actions
