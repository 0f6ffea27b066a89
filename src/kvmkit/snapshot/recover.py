"""`kvmkit snapshot recover`: make the catalog and the storage agree again after a crash.

Cheap pass (run at the start of every snapshot command): rows left `creating`/`deleting` and revert journals
whose VM lock is free are finished or undone, and a guest that such an operation left frozen or paused is thawed.
Full pass (the command itself) also deletes orphan snapshots kvmkit made but never catalogued, and drops rows
whose snapshots no longer exist on the storage.
"""

from __future__ import annotations

import logging

import libvirt
from pydantic import BaseModel

from kvmkit.errors import Conflict, KvmkitError
from kvmkit.snapshot.drivers.base import StagedRevert
from kvmkit.snapshot.drivers.registry import by_name, driver_for
from kvmkit.snapshot.engine import Engine
from kvmkit.snapshot.guard import vm_lock
from kvmkit.snapshot.model import State
from kvmkit.virt import agent
from kvmkit.virt.connection import connection, live_disks

log = logging.getLogger(__name__)


class RecoverAction(BaseModel):
    vm: str
    action: str
    detail: str


def recover(engine: Engine, *, full: bool = False) -> list[RecoverAction]:
    actions: list[RecoverAction] = []
    stale = engine.catalog.list(states=(State.CREATING, State.DELETING))
    journal = engine.catalog.journal()
    vm_uuids = {s.vm_uuid for s in stale} | {j[1] for j in journal}
    if not vm_uuids and not full:
        return actions
    with connection(engine.uri) as conn:
        for vm_uuid in sorted(vm_uuids):
            label = next((s.vm for s in stale if s.vm_uuid == vm_uuid), vm_uuid)
            try:
                with vm_lock(engine.state_dir, vm_uuid, label):
                    actions += _repair_vm(engine, conn, vm_uuid, label)
            except Conflict:
                continue  # an operation is running on that VM right now: not stale
        if full:
            actions += _full_pass(engine, conn)
    for action in actions:
        log.info("recover: %s %s: %s", action.vm, action.action, action.detail)
    return actions


def _repair_vm(engine: Engine, conn: libvirt.virConnect, vm_uuid: str, label: str) -> list[RecoverAction]:
    actions = []
    for snap in engine.catalog.list(vm_uuid, states=(State.CREATING, State.DELETING)):
        removed = engine.discard(snap)
        verb = "discarded half-made" if snap.state is State.CREATING else "finished deleting"
        actions.append(RecoverAction(vm=snap.vm, action=verb, detail=f"snapshot {snap.name}: {removed} disk "
                                                                     f"snapshot(s) removed, row dropped"))
    for entry_id, _uuid, op, data in engine.catalog.journal(vm_uuid):
        if op == "overlay":
            actions.append(_finish_overlay(conn, vm_uuid, label, data))
            engine.catalog.journal_done(entry_id)
            continue
        if op != "revert":
            continue
        staged = [StagedRevert(s["target"], s["driver"], s["data"]) for s in data["staged"]]
        if data["phase"] == "swapped":
            for item in staged:
                by_name(item.driver, engine.drivers).commit(item)
            detail = "every disk was swapped: committed"
        else:
            for item in staged:
                by_name(item.driver, engine.drivers).undo(item)
            detail = "interrupted before every disk was swapped: undone, disks as before"
        engine.catalog.journal_done(entry_id)
        actions.append(RecoverAction(vm=label, action=f"revert to {data['snapshot']}", detail=detail))
    actions += _unstick_guest(conn, vm_uuid, label)
    return actions


def _finish_overlay(conn: libvirt.virConnect, vm_uuid: str, label: str, data: dict) -> RecoverAction:
    """A crash between the overlay barrier and the commit: merge the overlays back so one image per disk remains."""
    from kvmkit.snapshot import overlay
    from kvmkit.virt.disks import Disk

    try:
        dom = conn.lookupByUUIDString(vm_uuid)
    except libvirt.libvirtError:
        dom = None  # a transient domain whose QEMU ended: only its files are left to merge
    disks = [Disk(target=d["target"], kind="file", format=d.get("format", "raw"), source=d["source"])
             for d in data["disks"]]
    _unstick_guest(conn, vm_uuid, label)  # a block commit needs a running, not paused, guest
    detail = overlay.finish(conn, dom, disks, data["tag"], data.get("mode", "libvirt"))
    return RecoverAction(vm=label, action="committed overlays", detail=detail)


def _unstick_guest(conn: libvirt.virConnect, vm_uuid: str, label: str) -> list[RecoverAction]:
    """The watchdog thaws within its deadline; this catches the case where it could not (e.g. it was killed too)."""
    try:
        dom = conn.lookupByUUIDString(vm_uuid)
    except libvirt.libvirtError:
        return []
    if not dom.isActive():
        return []
    if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        dom.resume()
        return [RecoverAction(vm=label, action="resumed", detail="left paused by an interrupted snapshot")]
    try:
        if agent.freeze_status(dom) == "frozen":
            agent.thaw(dom)
            return [RecoverAction(vm=label, action="thawed", detail="left frozen by an interrupted snapshot")]
    except KvmkitError:
        pass  # no agent: nothing can be frozen
    return []


def _full_pass(engine: Engine, conn: libvirt.virConnect) -> list[RecoverAction]:
    actions = _vanished_vms(engine, conn)
    for dom in conn.listAllDomains():
        try:
            vm_uuid, vm_name = dom.UUIDString(), dom.name()
        except libvirt.libvirtError:
            continue
        try:
            with vm_lock(engine.state_dir, vm_uuid, vm_name):
                snaps = engine.catalog.list(vm_uuid)
                known = {d.handle for s in snaps for d in s.disks}
                for disk in live_disks(dom):
                    try:
                        driver = driver_for(disk, engine.drivers)
                    except KvmkitError:
                        continue
                    for handle in driver.owned(disk):
                        if handle not in known:
                            driver.delete(_orphan(disk, driver.name, handle))
                            actions.append(RecoverAction(vm=vm_name, action="deleted orphan", detail=handle))
                for snap in snaps:
                    missing = [d.handle for d in snap.disks if not by_name(d.driver, engine.drivers).exists(d)]
                    if missing:  # a snapshot missing a disk is no snapshot: drop the rest of it too
                        engine.discard(snap)
                        actions.append(RecoverAction(vm=vm_name, action="dropped dangling row",
                                                     detail=f"snapshot {snap.name}: missing {', '.join(missing)}"))
        except Conflict:
            continue
        except libvirt.libvirtError:
            continue  # the domain went away while we looked (transient VMs come and go)
        except KvmkitError as exc:  # e.g. its storage unreachable: leave it for the next run
            actions.append(RecoverAction(vm=vm_name, action="skipped", detail=str(exc)))
    return actions


def _vanished_vms(engine: Engine, conn: libvirt.virConnect) -> list[RecoverAction]:
    """Rows of VMs no longer defined: kept while any of their snapshots still exists (it may be all that is left
    of the VM), dropped when none does."""
    actions = []
    present = {dom.UUIDString() for dom in conn.listAllDomains()}
    for snap in engine.catalog.list(states=(State.READY, State.ERROR)):
        if snap.vm_uuid in present:
            continue
        try:
            alive = any(by_name(d.driver, engine.drivers).exists(d) for d in snap.disks)
        except KvmkitError as exc:
            actions.append(RecoverAction(vm=snap.vm, action="skipped", detail=str(exc)))
            continue
        if not alive:
            assert snap.id is not None
            engine.catalog.remove(snap.id)
            actions.append(RecoverAction(vm=snap.vm, action="dropped dangling row",
                                         detail=f"snapshot {snap.name}: VM {snap.vm_uuid} and its snapshots are gone"))
    return actions


def _orphan(disk, driver_name: str, handle: str):
    from kvmkit.snapshot.model import DiskSnapshot

    return DiskSnapshot(target=disk.target, driver=driver_name, source=disk.source, handle=handle)
