"""The storage driver contract, checked the same way on every registered driver (and on the fake one).

A new driver joins by adding a `Rig` below: how to make a disk of its storage, write and read its first bytes, and
make a snapshot kvmkit did not make. Then every check runs on it: plan touches nothing, snapshot/exists/owned/delete
agree, a taken name is refused, only kvmkit's snapshots are owned or deleted, a revert staged → swapped →
committed gives the snapshot's data back even when its staging data went through the journal (as recover reads
it), undo gives the current data back, and the optional capabilities it declares are the ones expected.
The file and rbd rigs need the lab (XFS reflink pool, Ceph); the fake runs anywhere. The StorPool driver runs
against the FAKE StorPool API (tests/fakes/storpool_api.py) through StorPool's own binding over real HTTP: offline
with each volume a plain file ("storpool"), and on the lab's XFS pool with each volume a loop device behind
/dev/storpool/<name> and snapshots/reverts as reflinks ("storpool-devices").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmkit.errors import Conflict, KvmkitError
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions, StagedRevert, Staging, StorageDriver, capabilities
from kvmkit.snapshot.journal import RevertJournal, dump_payload, parse_entry
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk
from tests.fakes.memory_driver import FakeMemoryDriver, FakeMemoryDriverWithCapabilities

ALL_CAPABILITIES = ("InUse", "Flattenable", "GroupSnapshots", "Ownership")
BLOCK = 4096


class Rig:
    """One storage under test. Subclasses make disks on it; `cleanup` removes everything they made."""

    driver: StorageDriver
    expected_capabilities: tuple[str, ...] = ()

    def new_disk(self, first: bytes) -> Disk: ...

    def read(self, disk: Disk) -> bytes: ...

    def write(self, disk: Disk, data: bytes) -> None: ...

    def foreign_snapshot(self, disk: Disk, name: str) -> DiskSnapshot:
        """A snapshot on the disk that kvmkit did not make (an operator's, another tool's)."""
        ...

    def foreign_disk(self) -> Disk:
        """A disk of another storage, which this driver must not claim."""
        return Disk(target="vdf", kind="block", format="raw", source="/dev/null")

    def cleanup(self) -> None: ...


class MemoryRig(Rig):
    def __init__(self, driver: FakeMemoryDriver, expected: tuple[str, ...]) -> None:
        self.driver, self.expected_capabilities = driver, expected

    def new_disk(self, first: bytes) -> Disk:
        source = f"mem/c-{uuid.uuid4().hex[:8]}"
        self.driver.add_image(source, first)
        return Disk(target="vdx", kind="network", format="raw", source=source, protocol="nbd")

    def read(self, disk: Disk) -> bytes:
        return self.driver.images[disk.source][:BLOCK]

    def write(self, disk: Disk, data: bytes) -> None:
        self.driver.images[disk.source] = data

    def foreign_snapshot(self, disk: Disk, name: str) -> DiskSnapshot:
        self.driver.snaps[disk.source][name] = self.driver.images[disk.source]
        return DiskSnapshot(target=disk.target, driver=self.driver.name, source=disk.source,
                            handle=f"{disk.source}@{name}")


class FileRig(Rig):
    """Raw files on the lab's XFS reflink pool."""

    expected_capabilities = ("BarrierSnapshots", "Ownership")

    def __init__(self, pool: Path) -> None:
        from kvmkit.snapshot.drivers.file import FileDriver

        self.driver = FileDriver()
        self.dir = pool / f"compliance-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()

    def new_disk(self, first: bytes) -> Disk:
        path = self.dir / f"d-{uuid.uuid4().hex[:6]}.raw"
        with path.open("wb") as fh:
            fh.write(first)
            fh.truncate(1 << 20)
        return Disk(target="vdx", kind="file", format="raw", source=str(path))

    def read(self, disk: Disk) -> bytes:
        with open(disk.source, "rb") as fh:
            return fh.read(BLOCK)

    def write(self, disk: Disk, data: bytes) -> None:
        with open(disk.source, "r+b") as fh:
            fh.write(data)

    def foreign_snapshot(self, disk: Disk, name: str) -> DiskSnapshot:
        from kvmkit.snapshot.drivers.file import reflink

        handle = Path(f"{disk.source}@{name}")
        reflink(Path(disk.source), handle)
        return DiskSnapshot(target=disk.target, driver="file", source=disk.source, handle=str(handle))

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


class StorPoolRig(Rig):
    """Volumes of the FAKE StorPool API, disks as libvirt attaches them: <disk type='block'> /dev/storpool/<name>."""

    expected_capabilities = ("InUse", "GroupSnapshots", "Ownership")

    def __init__(self, root: Path, devices: bool) -> None:
        from storpool import spapi

        from kvmkit.snapshot.drivers.storpool import Endpoint, StorPoolDriver
        from tests.fakes.storpool_api import FakeStorPoolApi

        self.fake = FakeStorPoolApi(root / f"compliance-sp-{uuid.uuid4().hex[:8]}", devices=devices,
                                    require_reflink=devices, cluster_id="fake.cmp").start()
        self.driver = StorPoolDriver(Endpoint(self.fake.host, self.fake.port, self.fake.token, "compliance fake"))
        self.api = spapi.Api(host=self.fake.host, port=self.fake.port, auth=self.fake.token, transientRetries=0)

    def new_disk(self, first: bytes) -> Disk:
        vol = self.fake.make_volume(f"cmp-{uuid.uuid4().hex[:8]}", 1 << 20)
        with vol.path.open("r+b") as fh:
            fh.write(first)
        return Disk(target="vdx", kind="block", format="raw", source=str(self.fake.device(vol.name)))

    def _path(self, disk: Disk) -> Path:
        return self.fake.volumes[Path(disk.source).name].path

    def read(self, disk: Disk) -> bytes:
        with self._path(disk).open("rb") as fh:
            return fh.read(BLOCK)

    def write(self, disk: Disk, data: bytes) -> None:
        with self._path(disk).open("r+b") as fh:
            fh.write(data)

    def foreign_snapshot(self, disk: Disk, name: str) -> DiskSnapshot:
        self.api.snapshotCreate(Path(disk.source).name, {"name": name})  # as an operator would, untagged
        return DiskSnapshot(target=disk.target, driver="storpool", source=disk.source, handle=name)

    def foreign_disk(self) -> Disk:
        # a file image elsewhere (a <disk type='file'> on /dev/storpool/… IS StorPool's: the driver claims it)
        return Disk(target="vdf", kind="file", format="raw", source="/var/lib/libvirt/images/x.raw")

    def cleanup(self) -> None:
        self.driver.release()
        self.fake.stop()


class RbdRig(Rig):
    """Images in the lab Ceph's `rbd` pool, reached as libvirt names them (monitor host + conf file)."""

    expected_capabilities = ALL_CAPABILITIES

    def __init__(self, ceph) -> None:
        import rados

        from kvmkit.config import CephSettings
        from kvmkit.snapshot.drivers.rbd import RbdDriver

        self.ceph = ceph
        self.driver = RbdDriver(CephSettings(conf=ceph.conf))
        self.cluster = rados.Rados(conffile=str(ceph.conf))
        self.cluster.connect(timeout=10)
        self.ioctx = self.cluster.open_ioctx("rbd")
        self.prefix = f"compliance-{uuid.uuid4().hex[:8]}"

    def new_disk(self, first: bytes) -> Disk:
        import rbd

        name = f"{self.prefix}-{uuid.uuid4().hex[:6]}"
        rbd.RBD().create(self.ioctx, name, 4 << 20)
        with rbd.Image(self.ioctx, name) as img:
            img.write(first, 0)
        return Disk(target="vdx", kind="network", format="raw", source=f"rbd/{name}", protocol="rbd",
                    hosts=(("127.0.0.1", self.ceph.port),), config_file=str(self.ceph.conf))

    def read(self, disk: Disk) -> bytes:
        import rbd

        with rbd.Image(self.ioctx, disk.rbd_pool_image[1], read_only=True) as img:
            return img.read(0, BLOCK)

    def write(self, disk: Disk, data: bytes) -> None:
        import rbd

        with rbd.Image(self.ioctx, disk.rbd_pool_image[1]) as img:
            img.write(data, 0)

    def foreign_snapshot(self, disk: Disk, name: str) -> DiskSnapshot:
        import rbd

        with rbd.Image(self.ioctx, disk.rbd_pool_image[1]) as img:
            img.create_snap(name)
        return DiskSnapshot(target=disk.target, driver="rbd", source=disk.source, handle=f"{disk.source}@{name}")

    def foreign_disk(self) -> Disk:
        return Disk(target="vdf", kind="file", format="raw", source="/var/lib/x.raw")

    def cleanup(self) -> None:
        import rbd

        self.driver.release()
        for _ in range(4):  # clones before their parents' snapshots before the parents
            for name in [i for i in rbd.RBD().list(self.ioctx) if i.startswith(self.prefix)]:
                try:
                    with rbd.Image(self.ioctx, name) as img:
                        for snap in list(img.list_snaps()):
                            if img.is_protected_snap(snap["name"]):
                                img.unprotect_snap(snap["name"])
                            img.remove_snap(snap["name"])
                    rbd.RBD().remove(self.ioctx, name)
                except rbd.Error:
                    continue
        self.ioctx.close()
        self.cluster.shutdown()


@pytest.fixture(params=[
    "memory", "memory-capabilities",
    pytest.param("file", marks=pytest.mark.lab),
    pytest.param("rbd", marks=pytest.mark.lab),
    "storpool",
    pytest.param("storpool-devices", marks=pytest.mark.lab),
])
def rig(request) -> Iterator[Rig]:
    if request.param == "memory":
        made: Rig = MemoryRig(FakeMemoryDriver(), ("Ownership",))
    elif request.param == "memory-capabilities":
        made = MemoryRig(FakeMemoryDriverWithCapabilities(), ALL_CAPABILITIES)
    elif request.param == "storpool":  # the fake API keeps each volume as a plain file: no root, no lab
        made = StorPoolRig(request.getfixturevalue("tmp_path"), devices=False)
    elif request.param == "storpool-devices":  # loop devices and reflinks on the lab's XFS pool
        lab_state = request.getfixturevalue("lab_state")
        assert lab_state.pool is not None and lab_state.pool.kind == "xfs", "the fake's snapshots are reflinks"
        made = StorPoolRig(lab_state.pool.path, devices=True)
    else:
        lab_state = request.getfixturevalue("lab_state")
        if request.param == "file":
            assert lab_state.pool is not None and lab_state.pool.kind == "xfs", "the file driver needs reflinks"
            made = FileRig(lab_state.pool.path)
        else:
            assert lab_state.ceph is not None
            made = RbdRig(lab_state.ceph)
    try:
        yield made
    finally:
        made.cleanup()


def _journal_roundtrip(staged: list[StagedRevert]) -> list[StagedRevert]:
    """What recover gets back after a crash: the staged list as written to and parsed from the journal."""
    text = dump_payload(RevertJournal(snapshot="s", phase="staged", staged=staged))
    entry = parse_entry(1, "uuid", "revert", text)
    assert entry.damage is None and isinstance(entry.payload, RevertJournal)
    return entry.payload.staged


def test_is_a_storage_driver_that_claims_only_its_own_disks(rig):
    disk = rig.new_disk(b"a" * BLOCK)
    assert isinstance(rig.driver, StorageDriver) and rig.driver.name
    assert rig.driver.claims(disk)
    assert not rig.driver.claims(rig.foreign_disk())


def test_declares_exactly_the_expected_optional_capabilities(rig):
    assert tuple(capabilities(rig.driver)) == rig.expected_capabilities


def test_plan_touches_nothing_and_names_the_handle_it_will_make(rig):
    disk = rig.new_disk(b"a" * BLOCK)
    before = rig.driver.owned(disk)
    planned = rig.driver.plan(disk, "c-plan", PlanOptions())
    rig.driver.release()
    assert (planned.target, planned.driver, planned.source) == (disk.target, rig.driver.name, disk.source)
    assert not rig.driver.exists(planned)
    assert rig.driver.owned(disk) == before and planned.handle not in before


def test_snapshot_exists_is_owned_and_delete_removes_it_twice_over(rig):
    disk = rig.new_disk(b"a" * BLOCK)
    planned = rig.driver.plan(disk, "c-snap", PlanOptions())
    made = rig.driver.snapshot(planned)
    rig.driver.release()
    assert rig.driver.exists(made) and made.handle in rig.driver.owned(disk)
    rig.driver.delete(made)
    assert not rig.driver.exists(made) and made.handle not in rig.driver.owned(disk)
    rig.driver.delete(made)  # recover retries deletes: a missing snapshot is not an error


def test_a_snapshot_carries_the_catalog_that_planned_it_and_only_that(rig):
    disk = rig.new_disk(b"a" * BLOCK)
    made = rig.driver.snapshot(rig.driver.plan(disk, "c-own", PlanOptions(owner="catalog-a")))
    rig.driver.release()
    theirs = rig.foreign_snapshot(disk, "kvmkit-unmarked" if rig.driver.name != "file" else "unmarked.kvmkit")
    assert made.owner == "catalog-a" and rig.driver.owner_of(made) == "catalog-a"
    assert rig.driver.owner_of(theirs) is None  # made outside kvmkit: unmarked
    assert rig.driver.tag_of(made.handle) == "c-own"
    rig.driver.set_owner(theirs, "catalog-b")
    assert rig.driver.owner_of(theirs) == "catalog-b"
    rig.driver.delete(made)
    assert rig.driver.owner_of(made) is None


def test_a_name_already_taken_is_refused_at_plan(rig):
    disk = rig.new_disk(b"a" * BLOCK)
    rig.driver.snapshot(rig.driver.plan(disk, "c-twice", PlanOptions()))
    rig.driver.release()
    with pytest.raises(Conflict):
        rig.driver.plan(disk, "c-twice", PlanOptions())
    rig.driver.release()


def test_only_kvmkit_snapshots_are_owned_or_deleted(rig):
    disk = rig.new_disk(b"a" * BLOCK)
    theirs = rig.foreign_snapshot(disk, "operator-backup")
    assert theirs.handle not in rig.driver.owned(disk)
    with pytest.raises(Conflict, match="not a kvmkit snapshot"):
        rig.driver.delete(theirs)
    assert rig.driver.exists(theirs)


def _snapshot_then_change(rig) -> tuple[Disk, DiskSnapshot]:
    disk = rig.new_disk(b"before" * 100)
    made = rig.driver.snapshot(rig.driver.plan(disk, "c-rev", PlanOptions()))
    rig.driver.release()
    rig.write(disk, b"after!" * 100)
    return disk, made


def test_revert_staged_swapped_committed_from_the_journal_gives_the_snapshot_data_back(rig):
    disk, made = _snapshot_then_change(rig)
    staged = rig.driver.stage_revert(disk, made, RevertOptions())
    assert Staging.registry[staged.data.kind] is type(staged.data)  # its staging data parses back by kind
    assert rig.read(disk).startswith(b"after!")  # staging changes nothing the VM sees
    [parsed] = _journal_roundtrip([staged])
    assert parsed == staged
    rig.driver.swap(parsed)
    rig.driver.commit(parsed)
    assert rig.read(disk).startswith(b"before" * 100)


def test_revert_swapped_then_undone_gives_the_current_data_back(rig):
    disk, made = _snapshot_then_change(rig)
    staged = rig.driver.stage_revert(disk, made, RevertOptions())
    rig.driver.swap(staged)
    [parsed] = _journal_roundtrip([staged])
    rig.driver.undo(parsed)
    assert rig.read(disk).startswith(b"after!" * 100)
    assert rig.driver.exists(made)  # the snapshot itself is untouched


def test_revert_staged_then_undone_changes_nothing(rig):
    disk, made = _snapshot_then_change(rig)
    staged = rig.driver.stage_revert(disk, made, RevertOptions())
    rig.driver.undo(staged)
    assert rig.read(disk).startswith(b"after!" * 100)
    assert rig.driver.owned(disk) == [made.handle]


def test_revert_to_a_missing_snapshot_fails_cleanly(rig):
    disk, made = _snapshot_then_change(rig)
    rig.driver.delete(made)
    with pytest.raises(KvmkitError):
        rig.driver.stage_revert(disk, made, RevertOptions())
    assert rig.read(disk).startswith(b"after!")
