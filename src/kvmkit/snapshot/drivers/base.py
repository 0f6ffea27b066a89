"""The storage driver contract: the verbs every storage implements, so the engine never branches on storage type.

A driver is told a disk (from the live domain XML) and a tag (the snapshot name); it names the handle it would
create (`plan`, before anything is touched, so the catalog can record the intent), creates it (`snapshot`),
and can list the handles kvmkit made (`owned`) so `recover` finds orphans. Revert is two-phase (`stage` a
clone beside the disk, then `swap` it in) so a revert of several disks is all-or-nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk


@dataclass
class StagedRevert:
    """A revert prepared beside the disk; `data` is what the driver needs to swap, undo or commit it."""

    target: str
    driver: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PlanOptions:
    allow_full_copy: bool = False  # file disks without reflink: overlay barrier + full sparse copy after the thaw
    extent_limit: int = 2048  # file disks with more extents take the overlay barrier instead of a reflink in the freeze


@dataclass(frozen=True)
class RevertOptions:
    rollback: bool = False  # RBD: rollback_to_snap (O(size)) instead of the O(1) clone
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # one per revert, shared by its disks


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

    def stage_revert(self, disk: Disk, snap: DiskSnapshot, options: RevertOptions) -> StagedRevert: ...

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


@runtime_checkable
class GroupSnapshots(Protocol):
    """Optional: one atomic snapshot across several disks of one storage — crash-consistent with no freeze."""

    def group_snapshot(self, planned: Sequence[DiskSnapshot], vm_label: str, tag: str) -> list[DiskSnapshot]:
        """vm_label (`<vm>-<uuid8>`) names the storage-side group, so an operator can tell whose it is."""
        ...

    def serves_as_group(self, disks: Sequence[Disk]) -> bool: ...
