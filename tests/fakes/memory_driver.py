"""FakeMemoryDriver: a storage driver test double that keeps disk images and snapshots in a dict.

It implements the whole `StorageDriver` contract (plan, snapshot, exists, delete, owned, the two-phase revert)
with the same naming rules as the real drivers (`<source>@kvmkit-<tag>`, only `kvmkit-` snapshots are owned), so
the engine's state machine can be driven offline on libvirt's `test:///default`. Disks it serves are network disks
of protocol `nbd` whose export name starts with `mem/` (libvirt's test driver accepts any such XML).

Failure injection: `fail_on("snapshot", "vdb")` makes the next `snapshot` of disk vdb raise OperationFailed, as a
storage error would. Every call is recorded in `calls` for the tests to assert on.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

from kvmkit.errors import Conflict, KvmkitError, NotFound, OperationFailed
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions, StagedRevert, Staging
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk

PREFIX = "kvmkit-"


class FakeMemoryStaging(Staging):
    """A driver's own typed revert data, defined in the driver's module: it registers itself with the journal."""

    kind: Literal["fake-memory"] = "fake-memory"
    image: str
    snap: str
    new: str
    old: str


class BytesReader:
    """A snapshot's bytes as the reading contract hands them out (one extent: the fake keeps no holes)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def data_extents(self) -> list[tuple[int, int]]:
        return [(0, self.size)] if self.size else []

    def read_into(self, offset: int, buffer: bytearray) -> bytes:
        return self.data[offset:offset + len(buffer)].ljust(len(buffer), b"\0")

    def close(self) -> None:
        pass


class FakeMemoryDriver:
    name = "memory"

    def __init__(self) -> None:
        self.images: dict[str, bytes] = {}  # "mem/<name>" → content
        self.closes = 0
        self.snaps: dict[str, dict[str, bytes]] = {}  # image → snapshot name → content
        self.pinned: dict[str, str] = {}  # handle → why it is in use (for the InUse capability)
        self.clones: set[str] = set()  # images that are "clones" (for the Flattenable capability)
        self.owners: dict[str, str] = {}  # handle → catalog id marked on it (the Ownership capability)
        self.calls: list[tuple[str, str]] = []
        self.releases = 0
        self._failures: dict[tuple[str, str | None], KvmkitError] = {}
        self._lock = threading.Lock()

    # test helpers -----------------------------------------------------------------------------------------
    def add_image(self, source: str, data: bytes) -> None:
        self.images[source] = data
        self.snaps.setdefault(source, {})

    def fail_on(self, verb: str, target: str | None = None, error: KvmkitError | None = None) -> None:
        """The next call of `verb` (for disk `target`, or any disk) raises `error` (OperationFailed by default)."""
        self._failures[(verb, target)] = error or OperationFailed(f"fake storage error in {verb} of {target}")

    def _call(self, verb: str, target: str) -> None:
        with self._lock:
            self.calls.append((verb, target))
            error = self._failures.pop((verb, target), None) or self._failures.pop((verb, None), None)
        if error is not None:
            raise error

    # the contract -----------------------------------------------------------------------------------------
    def claims(self, disk: Disk) -> bool:
        return disk.kind == "network" and disk.protocol == "nbd" and disk.source.startswith("mem/")

    def plan(self, disk: Disk, tag: str, options: PlanOptions | None = None) -> DiskSnapshot:
        self._call("plan", disk.target)
        if disk.source not in self.images:
            raise NotFound(f"disk {disk.target}: image {disk.source} does not exist")
        if PREFIX + tag in self.snaps[disk.source]:
            raise Conflict(f"disk {disk.target}: {disk.source}@{PREFIX}{tag} already exists")
        return DiskSnapshot(target=disk.target, driver=self.name, source=disk.source,
                            handle=f"{disk.source}@{PREFIX}{tag}", size_bytes=len(self.images[disk.source]),
                            owner=options.owner if options else None)

    def snapshot(self, planned: DiskSnapshot) -> DiskSnapshot:
        self._call("snapshot", planned.target)
        image, _, snap = planned.handle.partition("@")
        with self._lock:
            self.snaps[image][snap] = self.images[image]
            if planned.owner:
                self.owners[planned.handle] = planned.owner
        return planned

    def exists(self, snap: DiskSnapshot) -> bool:
        image, _, name = snap.handle.partition("@")
        return name in self.snaps.get(image, {})

    def delete(self, snap: DiskSnapshot) -> None:
        self._call("delete", snap.target)
        image, _, name = snap.handle.partition("@")
        if not name.startswith(PREFIX):
            raise Conflict(f"{snap.handle} is not a kvmkit snapshot; kvmkit deletes only its own")
        with self._lock:
            self.snaps.get(image, {}).pop(name, None)
            self.owners.pop(snap.handle, None)

    def owner_of(self, snap: DiskSnapshot) -> str | None:
        return self.owners.get(snap.handle) if self.exists(snap) else None

    def set_owner(self, snap: DiskSnapshot, owner: str) -> None:
        self.owners[snap.handle] = owner

    def tag_of(self, handle: str) -> str | None:
        _, _, name = handle.partition("@")
        return name.removeprefix(PREFIX) if name.startswith(PREFIX) else None

    def owned(self, disk: Disk) -> list[str]:
        return sorted(f"{disk.source}@{name}" for name in self.snaps.get(disk.source, {}) if name.startswith(PREFIX))

    def release(self) -> None:
        self.releases += 1

    def close(self) -> None:
        self.closes += 1

    def open_reader(self, snap: DiskSnapshot) -> BytesReader:
        image, _, name = snap.handle.partition("@")
        if name not in self.snaps.get(image, {}):
            raise NotFound(f"snapshot {snap.handle} is missing")
        return BytesReader(self.snaps[image][name])

    def stage_revert(self, disk: Disk, snap: DiskSnapshot, options: RevertOptions) -> StagedRevert:
        self._call("stage_revert", disk.target)
        image, _, name = snap.handle.partition("@")
        if name not in self.snaps.get(image, {}):
            raise NotFound(f"disk {disk.target}: snapshot {snap.handle} is missing")
        new, old = f"{disk.source}.kvmkit-new", f"{disk.source}.kvmkit-old"
        self.images[new] = self.snaps[image][name]
        return StagedRevert(disk.target, self.name, FakeMemoryStaging(image=disk.source, snap=name, new=new, old=old))

    def swap(self, staged: StagedRevert) -> None:
        self._call("swap", staged.target)
        data = _staging(staged)
        if data.old not in self.images:
            self.images[data.old] = self.images[data.image]
        self.images[data.image] = self.images.pop(data.new)

    def undo(self, staged: StagedRevert) -> None:
        self.calls.append(("undo", staged.target))
        data = _staging(staged)
        if data.old in self.images:
            self.images[data.image] = self.images.pop(data.old)
        self.images.pop(data.new, None)

    def commit(self, staged: StagedRevert) -> None:
        self.calls.append(("commit", staged.target))
        data = _staging(staged)
        self.images.pop(data.old, None)
        self.images.pop(data.new, None)


class FakeMemoryDriverWithCapabilities(FakeMemoryDriver):
    """The same store, declaring every optional capability (InUse, Flattenable, GroupSnapshots; Ownership is
    the base fake's already)."""

    def in_use(self, snap: DiskSnapshot) -> str | None:
        return self.pinned.get(snap.handle)

    def flatten_if_clone(self, disk: Disk) -> bool:
        self.calls.append(("flatten", disk.target))
        if disk.source not in self.clones:
            return False
        self.clones.discard(disk.source)
        return True

    def serves_as_group(self, disks: Sequence[Disk]) -> bool:
        return all(self.claims(d) for d in disks)

    def group_snapshot(self, planned: Sequence[DiskSnapshot], vm_label: str, tag: str) -> list[DiskSnapshot]:
        self._call("group_snapshot", ",".join(p.target for p in planned))
        with self._lock:  # one atomic step across every disk
            for p in planned:
                image, _, snap = p.handle.partition("@")
                self.snaps[image][snap] = self.images[image]
                if p.owner:
                    self.owners[p.handle] = p.owner
        return [p.model_copy(update={"group": f"mem/{PREFIX}{vm_label}"}) for p in planned]


def _staging(staged: StagedRevert) -> FakeMemoryStaging:
    if not isinstance(staged.data, FakeMemoryStaging):
        raise OperationFailed(f"disk {staged.target}: revert data of kind {staged.data.kind!r} is not the memory "
                              "driver's")
    return staged.data
