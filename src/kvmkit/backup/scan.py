"""Finding a VM's backups on a target: by name or UUID, damaged manifests reported with the good ones, a backup and
its chain. Light on purpose (no driver, no libvirt): `backup list`, delete and prune run on a host without the
hypervisor bindings, and restore and verify start here too."""

from __future__ import annotations

from kvmkit.backup import chunking
from kvmkit.backup.model import BackupManifest, DamagedManifest
from kvmkit.backup.store import ChunkStore, manifest_key
from kvmkit.errors import InvalidInput, NotFound, OperationFailed
from kvmkit.names import UUID_RE, check_snapshot_name, check_vm_name


def vm_manifests(target: ChunkStore, vm: str, manifests: list[BackupManifest] | None = None) -> list[BackupManifest]:
    """A VM's backups by name or UUID; works after the VM itself is gone (the manifests carry both)."""
    return scan_vm(target, vm, manifests)[0]


def scan_vm(target: ChunkStore, vm: str, manifests: list[BackupManifest] | None = None,
            ) -> tuple[list[BackupManifest], list[DamagedManifest]]:
    """(the VM's good backups, the damaged manifests in its folder): a manifest that does not open (edited,
    renamed, sealed by another key) is never silently absent from what verify and restore say about a VM."""
    if not UUID_RE.match(vm):
        check_vm_name(vm)
    def wanted(m: BackupManifest) -> bool:
        return vm in (m.vm, m.vm_uuid)
    damaged: list[DamagedManifest] = []
    if manifests is None:  # other VMs' manifests are parsed one at a time and kept without their chunk lists
        manifests, damaged = target.scan_manifests(headers=True, keep=wanted)
    found = [m for m in manifests if wanted(m)]
    uuids = sorted({m.vm_uuid for m in found} or ({vm} if UUID_RE.match(vm) else set()))
    mine = [d for d in damaged if any(d.key.startswith(f"manifests/{u}/") for u in uuids)]
    if len(uuids) > 1:
        raise InvalidInput(f"several VMs named {vm!r} have backups on {target.name} ({', '.join(uuids)}): "
                           "name the VM by UUID")
    if not found:
        if mine or damaged:
            first = (mine or damaged)[0]
            raise OperationFailed(f"VM {vm} has no readable backups on target {target.name}; "
                                  f"{len(mine or damaged)} damaged manifest(s), first {first.key}: {first.problem}")
        raise NotFound(f"VM {vm} has no backups on target {target.name}")
    return found, mine


def find_backup(target: ChunkStore, vm: str, snapshot: str) -> tuple[BackupManifest, list[BackupManifest]]:
    """The backup and its chain (newest first)."""
    check_snapshot_name(snapshot)
    manifests, damaged = scan_vm(target, vm)
    by_name = {m.snapshot: m for m in manifests}
    if snapshot not in by_name:
        bad = next((d for d in damaged if d.key == manifest_key(manifests[0].vm_uuid, snapshot)), None)
        if bad is not None:
            raise OperationFailed(f"backup {snapshot} of VM {vm}: its manifest is damaged ({bad.problem}); nothing "
                                  "was restored")
        raise NotFound(f"VM {vm} has no backup of snapshot {snapshot!r} on target {target.name}")
    return by_name[snapshot], chunking.chain(by_name[snapshot], by_name)
