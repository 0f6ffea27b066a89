"""Helpers for backup tests: settings with a directory target, and snapshot records of real files."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from kvmkit.config import BackupTarget, Settings
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State

MiB = 1 << 20
TEST_URI = "test:///default"  # libvirt's in-memory driver: real libvirt, no daemon, no disks


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "target").mkdir()
    # gc_margin_s=0: a prune sweeps at once what it freed (tests count it); docs/backup.md says why it is 900 s.
    # test:///default: a restore refuses when libvirt cannot tell it no VM uses the destination; these tests run
    # before (and without) the lab's libvirtd, so they ask libvirt's in-process test driver (no domain has a disk).
    target = BackupTarget(name="t1", path=tmp_path / "target", gc_margin_s=0)
    return Settings(state_dir=tmp_path / "state", libvirt_uri=TEST_URI, backup_targets=[target])


def file_snapshot(name: str, files: dict[str, Path], when: datetime | None = None, vm: str = "vm1") -> Snapshot:
    """A snapshot record of these image files, named as the file driver names its snapshots
    (`<source>@<snapshot>.kvmkit`, a hard link to the image): an incremental asks FIEMAP only about such names."""
    vm_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, vm))
    disks = []
    for t, p in files.items():
        source = p.parent / f"{vm}-{t}.disk"
        handle = Path(f"{source}@{name}.kvmkit")
        if not (handle.exists() and handle.stat().st_ino == p.stat().st_ino):
            handle.unlink(missing_ok=True)
            os.link(p, handle)
        disks.append(DiskSnapshot(target=t, driver="file", source=str(source), handle=str(handle),
                                  size_bytes=p.stat().st_size))
    return Snapshot(vm_uuid=vm_uuid, vm=vm, name=name, created=when or datetime.now(), mode=Mode.OFFLINE,
                    state=State.READY, disks=disks)


def sparse_file(path: Path, size: int, writes: list[tuple[int, bytes]]) -> Path:
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset, data in writes:
            fh.seek(offset)
            fh.write(data)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def changed_bytes(a: Path, b: Path, block: int = 4096) -> int:
    """Ground truth for incrementals: bytes of the 4 KiB blocks that differ between two images."""
    fa, fb = a.open("rb"), b.open("rb")
    total = 0
    with fa, fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if not x and not y:
                return total
            total += block if x != y else 0


def later(snapshot: Snapshot, hours: int = 1) -> datetime:
    return snapshot.created + timedelta(hours=hours)


def randbytes(n: int) -> bytes:
    return os.urandom(n)
