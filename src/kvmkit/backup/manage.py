"""Listing, deleting and pruning backups. Deletion removes manifests (newest first), then sweeps chunks no
remaining manifest names, all under the target's exclusive lock: a kill -9 at any point leaves every remaining
manifest whole, and at worst unreferenced chunks that the next sweep removes."""

from __future__ import annotations

from pydantic import BaseModel

from kvmkit.backup import retention
from kvmkit.backup.model import BackupManifest
from kvmkit.backup.restore import find_backup, vm_manifests
from kvmkit.backup.targets import open_target
from kvmkit.config import Settings
from kvmkit.errors import Conflict
from kvmkit.snapshot.engine import failpoint


class Removal(BaseModel):
    vm: str
    deleted: list[str]  # snapshot names whose backups were deleted
    kept: dict[str, str] = {}  # snapshot name → why it was kept (prune)
    chunks_removed: int = 0
    bytes_freed: int = 0


def list_backups(settings: Settings, vm: str | None = None, target_name: str | None = None) -> list[BackupManifest]:
    target = open_target(settings, target_name)
    return vm_manifests(target, vm) if vm else target.manifests()


def items(manifests: list[BackupManifest]) -> list[retention.Item]:
    return [retention.Item(m.snapshot, retention.item_time(m.snapshot, m.snapshot_created), m.parent)
            for m in manifests]


def delete(settings: Settings, vm: str, snapshot: str, target_name: str | None = None,
           with_dependants: bool = False) -> Removal:
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
        for name in doomed:  # children first: a surviving manifest never loses its parent
            target.delete_manifest(by_name[name])
            failpoint("prune-mid-delete")
        removed, freed = target.collect_garbage()
    return Removal(vm=manifest.vm, deleted=doomed, chunks_removed=removed, bytes_freed=freed)


def prune(settings: Settings, vm: str, policy: retention.RetentionPolicy, target_name: str | None = None,
          dry_run: bool = False, scheduled_only: bool = False) -> Removal:
    """Delete the VM's backups no rule keeps; the newest and every kept backup's ancestors always stay.
    scheduled_only: the rules see (and may delete) only backups of sched-… snapshots, as a schedule does."""
    target = open_target(settings, target_name)
    with target.locked(exclusive=True):
        manifests = vm_manifests(target, vm)
        all_items = items(manifests)
        candidates = [i for i in all_items if not scheduled_only or i.name.startswith(retention.SCHEDULED_PREFIX)]
        kept = retention.with_ancestors(retention.keep(candidates, policy), all_items)
        kept.update({i.name: "not scheduled" for i in all_items if i not in candidates})
        doomed = sorted((m for m in manifests if m.snapshot not in kept),
                        key=lambda m: (m.snapshot_created, m.snapshot), reverse=True)
        removed = freed = 0
        if not dry_run:
            for manifest in doomed:
                target.delete_manifest(manifest)
                failpoint("prune-mid-delete")
            removed, freed = target.collect_garbage()
    return Removal(vm=manifests[0].vm, deleted=[m.snapshot for m in doomed], kept=kept, chunks_removed=removed,
                   bytes_freed=freed)
