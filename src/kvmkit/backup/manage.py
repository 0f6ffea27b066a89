"""Listing, deleting and pruning backups. Deletion removes manifests (newest first), then sweeps chunks no
remaining manifest names, all under the target's exclusive lock: a kill -9 at any point leaves every remaining
manifest whole (rewrites are atomic renames), and at worst unreferenced chunks that the next sweep removes."""

from __future__ import annotations

import time

from pydantic import BaseModel

from kvmkit.backup import chunking, gc, leases, retention
from kvmkit.backup.model import BackupManifest, DamagedManifest
from kvmkit.backup.scan import find_backup, vm_manifests
from kvmkit.backup.store import ChunkStore, SweepBlocked
from kvmkit.backup.targets import open_target
from kvmkit.config import Settings
from kvmkit.errors import Conflict
from kvmkit.failpoint import failpoint


class Removal(BaseModel):
    vm: str
    deleted: list[str]  # snapshot names whose backups were deleted
    kept: dict[str, str] = {}  # snapshot name → why it was kept (prune)
    rebased: list[str] = []  # kept incrementals rewritten as full because their parent was pruned
    chunks_removed: int = 0
    bytes_freed: int = 0
    sweep_skipped: str | None = None  # why no chunk was swept (a damaged manifest on the target)


def protected(target: ChunkStore) -> dict[tuple[str, str], str]:
    """(vm uuid, snapshot) → host, of every backup a live lease names as its parent (read fresh each time)."""
    running = leases.live(target, leases.storage_now(target))
    return {(lease.vm_uuid, lease.parent): lease.host for lease in running if lease.parent}


DECIDE_WITHIN_S = 2.5  # leases, then manifests, then the removal: well inside a writer's 5 s final-check wait


def still_unneeded(target: ChunkStore, manifest: BackupManifest, doomed: set[str]) -> bool:
    """May this manifest go now? Asked right before its removal, in this order: no live lease names it as a
    parent, then no manifest outside `doomed` names it as one (a backup that finished after the prune listed the
    VM's backups), all within DECIDE_WITHIN_S. A writer whose lease was not there yet when the leases were read
    cannot write its manifest before the removal: it waits 5 s after its last touch, then checks its parent."""
    started = time.monotonic()
    if (manifest.vm_uuid, manifest.snapshot) in protected(target):
        return False
    fresh = target.scan_manifests(manifest.vm_uuid, headers=True)[0]
    if any(m.parent == manifest.snapshot and m.snapshot not in doomed for m in fresh):
        return False
    return time.monotonic() - started < DECIDE_WITHIN_S


def sweep(target: ChunkStore) -> tuple[int, int, str | None]:
    """(chunks removed, bytes freed, why skipped): a damaged manifest anywhere on the target blocks the sweep
    (its chunks may be live) but not the deletion of other VMs' manifests; the next sweep frees their chunks."""
    try:
        return (*gc.collect(target), None)
    except SweepBlocked as exc:
        return 0, 0, str(exc)


def list_backups(settings: Settings, vm: str | None = None,
                 target_name: str | None = None) -> tuple[list[BackupManifest], list[DamagedManifest]]:
    """(good backups, damaged manifests of the whole target): a damaged one is listed, never used."""
    target = open_target(settings, target_name)
    manifests, damaged = target.scan_manifests(headers=True)
    return (vm_manifests(target, vm, manifests) if vm else manifests), damaged


def items(manifests: list[BackupManifest]) -> list[retention.Item]:
    return [retention.Item(m.snapshot, retention.item_time(m.snapshot, m.snapshot_created), m.parent)
            for m in manifests]


def delete(settings: Settings, vm: str, snapshot: str, target_name: str | None = None,
           with_dependants: bool = False, dry_run: bool = False) -> Removal:
    """Delete one backup (with --with-dependants, the incrementals built on it too); dry_run: only say which."""
    target = open_target(settings, target_name)
    with target.locked(exclusive=True):
        manifest, _ = find_backup(target, vm, snapshot)
        manifests = vm_manifests(target, vm)
        dependants = retention.dependants(snapshot, items(manifests))
        if dependants and not with_dependants:
            raise Conflict(f"backup {snapshot} of VM {manifest.vm} is the base of incremental backup(s) "
                           f"{', '.join(dependants)}; pass --with-dependants to delete them too")
        by_name = {m.snapshot: m for m in manifests}
        doomed = [*reversed(dependants), snapshot]
        if dry_run:
            return Removal(vm=manifest.vm, deleted=doomed)
        def refuse_leased() -> None:
            running = protected(target)
            for name in doomed:
                holder = running.get((manifest.vm_uuid, name))
                if holder is not None:
                    raise Conflict(f"backup {name} of VM {manifest.vm} is the parent of a backup running on "
                                   f"{holder}; delete it after that backup ends")
        refuse_leased()  # before anything goes, and again before each removal (a backup may start meanwhile)
        for name in doomed:  # children first: a surviving manifest never loses its parent
            refuse_leased()
            if not still_unneeded(target, by_name[name], set(doomed)):
                raise Conflict(f"backup {name} of VM {manifest.vm} became the base of a backup that finished "
                               "meanwhile; nothing more was deleted (run it again to see the dependants)")
            target.delete_manifest(by_name[name])
            failpoint("prune-mid-delete")
        removed, freed, skipped = sweep(target)
    return Removal(vm=manifest.vm, deleted=doomed, chunks_removed=removed, bytes_freed=freed, sweep_skipped=skipped)


def prune(settings: Settings, vm: str, policy: retention.RetentionPolicy, target_name: str | None = None,
          dry_run: bool = False, scheduled_only: bool = False) -> Removal:
    """Delete the VM's backups no rule keeps; the newest always stays. A kept incremental whose parent goes is
    first rewritten as a full manifest (its resolved chunk map: no data moves), so retention is never blocked
    by a chain and no kept backup ever loses a chunk.
    scheduled_only: the rules see (and may delete) only backups of sched-… snapshots, as a schedule does."""
    target = open_target(settings, target_name)
    with target.locked(exclusive=True):
        manifests = vm_manifests(target, vm)
        all_items = items(manifests)
        candidates = [i for i in all_items if not scheduled_only or i.name.startswith(retention.SCHEDULED_PREFIX)]
        kept = retention.keep(candidates, policy)
        kept.update({i.name: "not scheduled" for i in all_items if i not in candidates})
        if not dry_run:
            kept.update({snap: f"parent of a backup running on {host}" for (uuid, snap), host
                         in protected(target).items() if uuid == manifests[0].vm_uuid and snap not in kept})
        doomed = sorted((m for m in manifests if m.snapshot not in kept),
                        key=lambda m: (m.snapshot_created, m.snapshot), reverse=True)
        rebase = [m for m in manifests if m.snapshot in kept and m.parent is not None and m.parent not in kept]
        removed = freed = 0
        skipped = None
        if not dry_run:
            by_name = {m.snapshot: m for m in manifests}
            # all resolved before any change
            rebased = [as_full(m, chunking.chain(m, by_name)) for m in rebase]
            for manifest in rebased:
                target.write_manifest(manifest)
                failpoint("prune-mid-rebase")
            doomed_names = {m.snapshot for m in doomed}
            for manifest in doomed:
                if not still_unneeded(target, manifest, doomed_names):  # a backup started or ended meanwhile
                    kept[manifest.snapshot] = "parent of a backup that ran during the prune"
                    continue
                target.delete_manifest(manifest)
                failpoint("prune-mid-delete")
            doomed = [m for m in doomed if m.snapshot not in kept]
            removed, freed, skipped = sweep(target)
    return Removal(vm=manifests[0].vm, deleted=[m.snapshot for m in doomed], kept=kept,
                   rebased=[m.snapshot for m in rebase], chunks_removed=removed, bytes_freed=freed,
                   sweep_skipped=skipped)


def as_full(manifest: BackupManifest, chain: list[BackupManifest]) -> BackupManifest:
    """The same backup with every disk's whole chunk map and no parent."""
    disks = [disk.model_copy(update={"full": True, "chunks": sorted(chunking.resolve(disk.target, chain)[1].items())})
             for disk in manifest.disks]
    return manifest.model_copy(update={"parent": None, "disks": disks})
