"""The storage driver contract: the verbs every storage implements, so the engine never branches on storage type.

A driver is told a disk (from the live domain XML) and a tag (the snapshot name); it names the handle it would
create (`plan`, before anything is touched, so the catalog can record the intent), creates it (`snapshot`),
reads it back for backup (`open_reader`, reading.py: backup never branches on a storage's name), and can list
the handles kvmkit made (`owned`) so `recover` finds orphans. Revert is two-phase (`stage` a clone beside the
disk, then `swap` it in) so a revert of several disks is all-or-nothing.

Optional abilities are declared, never probed for: a driver that has one implements its Protocol below
(`InUse`, `Flattenable`, `GroupSnapshots`, `BarrierSnapshots`, `Ownership`) and the engine asks
`isinstance(driver, InUse)`. The compliance test
(tests/snapshot/test_driver_compliance.py) runs the same checks on every registered driver.

What a driver hands back for a revert (`StagedRevert` and its typed `Staging` data) lives in `snapshot/journal.py`,
because it is journaled and parsed back strictly by `recover`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from kvmkit.snapshot.drivers.reading import SnapshotReader, TracksChanges
from kvmkit.snapshot.journal import StagedRevert, Staging
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.connection import Connection, Domain
from kvmkit.virt.disks import Disk

BarrierMode = Literal["qmp", "libvirt"]

__all__ = [
    "BarrierMode",
    "BarrierSnapshots",
    "Flattenable",
    "GroupSnapshots",
    "InUse",
    "Ownership",
    "PlanOptions",
    "RevertOptions",
    "SnapshotReader",
    "StagedRevert",
    "Staging",
    "StorageDriver",
    "TracksChanges",
    "capabilities",
]


@dataclass(frozen=True)
class PlanOptions:
    allow_full_copy: bool = False  # file disks without reflink: overlay barrier + full sparse copy after the thaw
    extent_limit: int = 2048  # file disks with more extents take the overlay barrier instead of a reflink in the freeze
    owner: str | None = None  # the catalog's id: drivers with Ownership mark what they make with it
    vm_uuid: str | None = None  # the domain's uuid, as the engine looked it up (on its own --connect URI)


@dataclass(frozen=True)
class RevertOptions:
    rollback: bool = False  # RBD: rollback_to_snap (O(size)) instead of the O(1) clone
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # one per revert, shared by its disks


@runtime_checkable
class StorageDriver(Protocol):
    name: str

    def claims(self, disk: Disk) -> bool: ...

    def plan(self, disk: Disk, tag: str, options: PlanOptions) -> DiskSnapshot:
        """The handle `snapshot` will create; raises if the storage cannot or the name is taken. Touches nothing."""
        ...

    def snapshot(self, planned: DiskSnapshot) -> DiskSnapshot:
        """Create the planned snapshot. Fast (metadata-only where the storage can): it runs inside the freeze."""
        ...

    def exists(self, snap: DiskSnapshot) -> bool: ...

    def delete(self, snap: DiskSnapshot) -> None:
        """Remove a snapshot kvmkit made; a missing one is not an error (delete is retried by recover)."""
        ...

    def owned(self, disk: Disk) -> list[str]:
        """Handles of the snapshots kvmkit made on this disk (by kvmkit's naming), catalogued or not."""
        ...

    def stage_revert(self, disk: Disk, snap: DiskSnapshot, options: RevertOptions) -> StagedRevert:
        """Prepare the revert beside the disk (nothing the VM sees changes); the typed data is journaled."""
        ...

    def swap(self, staged: StagedRevert) -> None:
        """Point the disk at the staged image; the previous image is kept until `commit`."""
        ...

    def undo(self, staged: StagedRevert) -> None:
        """Put the previous image back (after a failed swap of another disk) and drop the staged one."""
        ...

    def commit(self, staged: StagedRevert) -> None:
        """Drop the previous image: the revert is final."""
        ...

    def release(self) -> None:
        """Close what `plan` opened (images kept open so the freeze holds only the snapshot calls)."""
        ...

    def open_reader(self, snap: DiskSnapshot) -> SnapshotReader:
        """Read a snapshot this driver made, as its guest sees it (backup's only way in), reaching the storage
        from the snapshot's own record. The reader declares `TracksChanges` if it can list changed extents."""
        ...

    def close(self) -> None:
        """Drop what the driver connected to (Ceph clusters): the end of an operation."""
        ...


@runtime_checkable
class GroupSnapshots(Protocol):
    """Optional: one atomic snapshot across several disks of one storage — crash-consistent with no freeze."""

    def group_snapshot(self, planned: Sequence[DiskSnapshot], vm_label: str, tag: str) -> list[DiskSnapshot]:
        """vm_label (`<vm>-<uuid8>`) names the storage-side group, so an operator can tell whose it is."""
        ...

    def serves_as_group(self, disks: Sequence[Disk]) -> bool: ...


@runtime_checkable
class BarrierSnapshots(Protocol):
    """Optional: disks whose snapshot would hold the freeze too long (a fragmented file to reflink, a full copy on a
    filesystem without reflink) are planned `Method.BARRIER`. The freeze then holds only an O(1) barrier this driver
    sets up — the disks switched onto overlays in one transaction — and after the thaw the engine snapshots the quiet
    bases (`snapshot`) and has the driver merge the overlays back. The engine journals the barrier (OverlayJournal)
    so `recover` can merge them after a crash."""

    def prepare_barrier(self, dom: Domain, disks: Sequence[Disk], tag: str,
                        mode: BarrierMode) -> Callable[[], None]:
        """Everything the barrier needs, made before the freeze; returns the one call the freeze holds."""
        ...

    def finish_barrier(self, conn: Connection, dom: Domain | None, disks: Sequence[Disk], tag: str,
                       mode: BarrierMode) -> str:
        """Merge the overlays back (after the snapshot, on a failure, or in recover: `dom` None when the domain is
        gone); says what it did."""
        ...


@runtime_checkable
class InUse(Protocol):
    """Optional: a snapshot something else depends on (e.g. an RBD clone left by a revert) must not be deleted."""

    def in_use(self, snap: DiskSnapshot) -> str | None:
        """Why the snapshot cannot be deleted now, or None."""
        ...


@runtime_checkable
class Flattenable(Protocol):
    """Optional: a disk a revert left as a clone can be given its own data, freeing its parent's snapshots."""

    def flatten_if_clone(self, disk: Disk) -> bool:
        """Flatten the disk if it is a clone (O(size)); True if it was one."""
        ...


@runtime_checkable
class Ownership(Protocol):
    """Optional: every snapshot object carries the id of the catalog that made it (`planned.owner`, marked by
    `snapshot`), so `recover` deletes only its own and reports the rest. Without it, a driver's uncatalogued
    snapshots are all "unknown" to recover: reported, never deleted."""

    def owner_of(self, snap: DiskSnapshot) -> str | None:
        """The catalog id marked on the snapshot's storage object; None if it carries none (or is gone)."""
        ...

    def set_owner(self, snap: DiskSnapshot, owner: str) -> None:
        """Mark an existing snapshot as made by `owner` (recover --adopt)."""
        ...

    def tag_of(self, handle: str) -> str | None:
        """The snapshot name in one of kvmkit's handles (the inverse of plan's naming), None if not kvmkit's."""
        ...


CAPABILITIES: tuple[type, ...] = (InUse, Flattenable, GroupSnapshots, BarrierSnapshots, Ownership)


def capabilities(driver: object) -> list[str]:
    """The optional abilities a driver declares, by Protocol name (for docs, `--json` and the compliance test)."""
    return [cap.__name__ for cap in CAPABILITIES if isinstance(driver, cap)]
