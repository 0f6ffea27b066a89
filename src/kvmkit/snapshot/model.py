"""Snapshot records: the same objects the catalog stores and `--json` prints."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from kvmkit.names import SNAPSHOT_NAME_RE, SNAPSHOT_NAME_RULE, check_snapshot_name  # noqa: F401 (one rule, there)


class Mode(StrEnum):
    QUIESCED = "quiesced"  # guest filesystems frozen through qemu-guest-agent
    CRASH = "crash"  # VM paused (or shut off) while the disks are snapshotted: no agent needed
    GROUP = "group"  # one storage snapshots all disks atomically: neither frozen nor paused
    OFFLINE = "offline"  # the VM was shut off: its disks were already quiet


class Method(StrEnum):
    """How one disk is snapshotted (the value is what the catalog has always stored)."""

    DIRECT = "direct"  # snapshotted inside the freeze (reflink, RBD create_snap, …)
    BARRIER = "overlay"  # an O(1) barrier inside the freeze (BarrierSnapshots), the snapshot itself after the thaw


class State(StrEnum):
    CREATING = "creating"
    READY = "ready"
    ERROR = "error"
    DELETING = "deleting"


class DiskSnapshot(BaseModel):
    target: str
    driver: str
    source: str  # the disk: file path or pool/image
    handle: str  # the snapshot: file path, or pool/image@snap
    format: str = "raw"  # as the domain XML defines the disk (qcow2: read through QEMU, never probed)
    size_bytes: int = 0  # provisioned size of the disk at snapshot time
    group: str | None = None  # storage-side group snapshot this one belongs to (mode group)
    location: dict[str, str] = {}  # how the driver reaches the storage again (RBD: conf, mon_host, client id)
    method: Method = Method.DIRECT
    extents: int | None = None  # file disks: extents before the freeze (what a reflink costs), counted up to
    # the limit + 1: a value above reflink_extent_limit means "more than that"
    owner: str | None = None  # id of the catalog that made it, also marked on the storage object (None: older)


class Snapshot(BaseModel):
    id: int | None = None
    vm_uuid: str
    vm: str
    name: str
    created: datetime
    mode: Mode
    state: State
    freeze_ms: float | None = None  # freeze call start → thaw call end (0 for group mode)
    pause_ms: float | None = None  # crash mode: suspend → resume
    storage_ms: float | None = None  # the concurrent per-disk snapshots alone (inside the window)
    after_thaw_ms: float | None = None  # overlay path: clone/copy of the quiet bases + commit back, after the thaw
    commit_ms: float | None = None  # overlay path: the block commit back alone (part of after_thaw_ms)
    total_ms: float | None = None
    error: str | None = None
    disks: list[DiskSnapshot] = []
    group: str | None = None  # the consistency group (across VMs) this snapshot is one member of (group.py)
    freeze_began: datetime | None = None  # when this VM's freeze (or pause) call began, UTC
    thaw_ended: datetime | None = None  # when its thaw (or resume) call returned: every member's window overlaps

    def disk(self, target: str) -> DiskSnapshot | None:
        return next((d for d in self.disks if d.target == target), None)

    def refuse_alone(self, verb: str) -> None:
        """A member of a group snapshot is reverted or deleted with its group (group_ops.py), never alone."""
        if self.group:
            from kvmkit.errors import Conflict

            raise Conflict(f"snapshot {self.name} of VM {self.vm} is part of group {self.group}: {verb} it with "
                           f"--group {self.group}, every VM at once")


def default_name(now: datetime) -> str:
    return now.strftime("snap-%Y%m%d-%H%M%S-%f")[:-3]
