"""Revert: stage every disk's snapshot beside it, swap them all, then commit — journaled, so an interrupted
revert is finished (every disk swapped) or undone (not all were) by `recover`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import libvirt

from kvmkit.errors import Conflict, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.snapshot.drivers.base import RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.registry import by_name
from kvmkit.snapshot.guard import vm_lock
from kvmkit.snapshot.model import Snapshot, State, check_snapshot_name
from kvmkit.virt import agent
from kvmkit.virt.connection import connection, is_running, live_disks, lookup
from kvmkit.virt.disks import Disk

if TYPE_CHECKING:
    from kvmkit.snapshot.engine import Engine


def revert(engine: Engine, vm: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
           stop_timeout_s: float = 10.0, rollback: bool = False) -> Snapshot:
    """Put every disk back to the snapshot: the VM shut off (or stopped with force_stop), all-or-nothing."""
    check_snapshot_name(name)
    with connection(engine.uri) as conn:
        dom = lookup(conn, vm)
        vm_uuid = dom.UUIDString()
        with vm_lock(engine.state_dir, vm_uuid, vm, wait_s):
            snap = engine.catalog.get(vm_uuid, name, vm)
            if snap.state is not State.READY:
                raise Conflict(f"snapshot {name} of VM {vm} is {snap.state.value}, not ready")
            current = {d.target: d for d in live_disks(dom)}
            missing = [d.target for d in snap.disks if d.target not in current]
            if missing:
                raise Conflict(f"VM {vm} no longer has disk(s) {', '.join(missing)} of snapshot {name}")
            was_running = is_running(dom)
            if was_running and not force_stop:
                raise Conflict(f"VM {vm} is running; shut it down first or pass --force-stop")
            had_agent = was_running and agent.ping(dom)
            if was_running:
                _power_off(dom, stop_timeout_s)
            _swap_all(engine, vm_uuid, snap, current, RevertOptions(rollback=rollback))
            if was_running:
                dom.create()
                if had_agent:
                    _wait_agent(dom, timeout_s=120)
            return snap

def _swap_all(engine: Engine, vm_uuid: str, snap: Snapshot, current: dict[str, Disk], options: RevertOptions) -> None:
    """Stage every disk, swap them all, then commit: all-or-nothing across disks, journaled for recover."""
    staged: list[StagedRevert] = []
    entry = engine.catalog.journal_add(vm_uuid, "revert", {"snapshot": snap.name, "phase": "staging", "staged": []})
    try:
        for disk_snap in snap.disks:
            driver = by_name(disk_snap.driver, engine.drivers)
            staged.append(driver.stage_revert(current[disk_snap.target], disk_snap, options))
            engine.catalog.journal_update(entry, _revert_record(snap.name, "staged", staged))
        swapped: list[StagedRevert] = []
        try:
            for item in staged:
                by_name(item.driver, engine.drivers).swap(item)
                swapped.append(item)
                failpoint("revert-mid-swap")
        except BaseException:
            for item in reversed(staged):
                by_name(item.driver, engine.drivers).undo(item)
            raise
    except BaseException:
        for item in staged:
            by_name(item.driver, engine.drivers).undo(item)
        engine.catalog.journal_done(entry)
        raise
    engine.catalog.journal_update(entry, _revert_record(snap.name, "swapped", staged))
    for item in staged:
        by_name(item.driver, engine.drivers).commit(item)
    _move_handles(engine, vm_uuid, staged)
    engine.catalog.journal_done(entry)

def _move_handles(engine: Engine, vm_uuid: str, staged: list[StagedRevert]) -> None:
    """A revert by clone leaves the older snapshots on a renamed base image: point their rows there."""
    moves = {old: new for item in staged for old, new in item.data.get("moves", {}).items()}
    if not moves:
        return
    for snap in engine.catalog.list(vm_uuid):
        changed = False
        for disk_snap in snap.disks:
            for old, new in moves.items():
                if disk_snap.handle.startswith(old):
                    disk_snap.handle = new + disk_snap.handle.removeprefix(old)
                    changed = True
        if changed:
            engine.catalog.update(snap)


def _revert_record(name: str, phase: str, staged: list[StagedRevert]) -> dict:
    return {"snapshot": name, "phase": phase,
            "staged": [{"target": s.target, "driver": s.driver, "data": s.data} for s in staged]}


def _wait_agent(dom: libvirt.virDomain, timeout_s: float) -> None:
    """After a --force-stop revert: the VM is back when its agent answers again (the agent has no ready event)."""
    deadline = time.monotonic() + timeout_s
    while not agent.ping(dom, timeout_s=1):
        if time.monotonic() > deadline:
            raise OperationFailed(f"VM {dom.name()} was reverted and started, but its agent did not answer "
                                  f"within {timeout_s:.0f} s")
        time.sleep(0.25)


def _power_off(dom: libvirt.virDomain, timeout_s: float) -> None:
    """Agent or ACPI shutdown first; hard power-off if the guest ignores it (a revert discards its state anyway)."""
    try:
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    except libvirt.libvirtError:
        pass
    deadline = time.monotonic() + timeout_s
    while dom.isActive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if dom.isActive():
        dom.destroy()
