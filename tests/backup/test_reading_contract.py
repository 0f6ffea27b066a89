"""Backup reads every snapshot through the driver that made it (`open_reader`), never by the driver's name: a
storage kvmkit's backup code has never heard of (the FAKE in-memory driver) is backed up, incrementally from what
its reader says changed, and restored byte for byte."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta

from kvmkit.backup import restore
from kvmkit.backup.create import Backup
from kvmkit.backup.store import DirTarget
from kvmkit.snapshot.drivers.base import PlanOptions, StorageDriver
from kvmkit.snapshot.drivers.reading import TracksChanges
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State
from kvmkit.virt.disks import Disk
from tests.fakes.memory_driver import BytesReader, FakeMemoryDriver

MiB = 1 << 20
BLOCK = 4096


class DiffingReader(BytesReader):
    """Stands in for a storage that diffs its own snapshots (librbd's diff_iterate): the changed 4 KiB blocks."""

    change_method = "rbd-diff"

    def __init__(self, data: bytes, older: dict[str, bytes]) -> None:
        super().__init__(data)
        self.older = older
        self.asked: list[str] = []

    def changed_since(self, older_handle: str) -> list[tuple[int, int]] | None:
        self.asked.append(older_handle)
        old = self.older.get(older_handle.partition("@")[2])
        if old is None:
            return None
        return [(o, BLOCK) for o in range(0, self.size, BLOCK) if old[o:o + BLOCK] != self.data[o:o + BLOCK]]


class DiffingDriver(FakeMemoryDriver):
    def open_reader(self, snap: DiskSnapshot) -> DiffingReader:
        image, _, name = snap.handle.partition("@")
        self.reader = DiffingReader(self.snaps[image][name], self.snaps[image])
        return self.reader


def take(driver: FakeMemoryDriver, name: str, when: datetime) -> Snapshot:
    disk = Disk("vda", "network", "raw", "mem/img", protocol="nbd")
    planned = driver.plan(disk, name, PlanOptions())
    return Snapshot(vm_uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, "memvm")), vm="memvm", name=name, created=when,
                    mode=Mode.OFFLINE, state=State.READY, disks=[driver.snapshot(planned)])


def test_a_driver_backup_never_heard_of_is_backed_up_incrementally_and_restored(tmp_path, settings):
    driver = DiffingDriver()
    assert isinstance(driver, StorageDriver)
    rng = random.Random(7)
    data = bytearray(rng.randbytes(8 * MiB))
    driver.add_image("mem/img", bytes(data))
    t0 = datetime.now() - timedelta(hours=1)
    first = take(driver, "s1", t0)
    for offset in (0, 3 * MiB + 8192, 7 * MiB):
        data[offset:offset + BLOCK] = rng.randbytes(BLOCK)
    driver.images["mem/img"] = bytes(data)
    second = take(driver, "s2", t0 + timedelta(minutes=1))

    store = DirTarget("t1", settings.backup_targets[0].path)
    full = Backup(settings, store, "zstd", lambda _n: None, drivers=[driver]).run(first)
    assert full.disks[0].driver == "memory" and full.disks[0].full
    incremental = Backup(settings, store, "zstd", lambda _n: None, drivers=[driver]).run(second)
    vda = incremental.disks[0]
    assert isinstance(driver.reader, TracksChanges) and driver.reader.asked == ["mem/img@kvmkit-s1"]
    assert vda.change_method == "rbd-diff" and vda.diff_bytes == 3 * BLOCK
    assert vda.read_bytes == 3 * MiB  # the three touched 1 MiB chunks, nothing else
    assert driver.closes == 0  # drivers handed in are the caller's to close

    out = tmp_path / "restored.raw"
    restore.restore(settings, "memvm", "s2", to=[f"vda={out}"])
    assert out.read_bytes() == bytes(data)
