"""File-disk incrementals read only what changed: FIEMAP on reflink snapshots (XFS), chunk hashes elsewhere (ext4),
and never fetch a parent chunk back from the target; every backup restores byte for byte."""

from __future__ import annotations

import fcntl
import os
import random
from pathlib import Path

import pytest

from kvmkit.backup import restore
from kvmkit.backup.blockindex import index_path
from kvmkit.backup.create import Backup
from kvmkit.backup.model import BackupManifest, ChangeMethod
from kvmkit.backup.store import DirTarget
from tests.backup.conftest import changed_bytes, file_snapshot, later, sha
from tests.fixtures.loopfs import loop_fs

pytestmark = pytest.mark.lab  # real loop filesystems (root, /dev/loop*); no VM
FICLONE = 0x40049409
B, MiB = 4096, 1 << 20


class CountingTarget(DirTarget):
    """A folder target that counts reads of chunk blobs: an incremental must not read any back."""

    chunk_reads = 0

    def _get(self, key: str, *args: int) -> bytes | None:
        if key.startswith("chunks/"):
            CountingTarget.chunk_reads += 1
        return super()._get(key, *args)


@pytest.fixture(scope="module")
def xfs(tmp_path_factory) -> Path:
    with loop_fs(tmp_path_factory.mktemp("xfs"), "xfs", 1024) as mnt:
        yield mnt


@pytest.fixture(scope="module")
def ext4(tmp_path_factory) -> Path:
    with loop_fs(tmp_path_factory.mktemp("ext4"), "ext4", 256) as mnt:
        yield mnt


def clone(src: Path, dst: Path) -> None:
    with src.open("rb") as a, dst.open("wb") as b:
        fcntl.ioctl(b.fileno(), FICLONE, a.fileno())


def snapshot_of(disk: Path, name: str, reflink: bool = True) -> Path:
    """What the file driver does: `<disk>@<name>.kvmkit`, a clone (or a copy where there is no reflink)."""
    snap = disk.with_name(f"{disk.name}@{name}.kvmkit")
    if reflink:
        clone(disk, snap)
    else:
        snap.write_bytes(disk.read_bytes())
    return snap


def make_disk(path: Path, size: int, rng: random.Random) -> Path:
    """Half the chunks hold random data, a few hold text, the rest are holes."""
    with path.open("wb") as fh:
        fh.truncate(size)
        for index in range(size // MiB):
            if index % 2 == 0:
                fh.seek(index * MiB)
                fh.write(rng.randbytes(MiB) if index % 6 else (b"log line %d\n" % index) * (MiB // 12))
    return path


def scatter(path: Path, rng: random.Random, blocks: int, same: bool = False) -> None:
    fd = os.open(path, os.O_RDWR)
    size = os.fstat(fd).st_size
    for blk in rng.sample(range(size // B), blocks):
        data = os.pread(fd, B, blk * B) if same else rng.randbytes(B)
        os.pwrite(fd, data, blk * B)
    os.fsync(fd)
    os.close(fd)


def backup(settings, target: DirTarget, snap_path: Path, name: str, when) -> BackupManifest:
    return Backup(settings, target, "zstd", lambda _n: None).run(file_snapshot(name, {"vda": snap_path}, when))


def restored_sha(settings, tmp_path: Path, name: str) -> str:
    out = tmp_path / f"restored-{name}"
    restore.restore(settings, "vm1", name, to=[f"vda={out}"])
    return sha(out)


@pytest.fixture()
def target(settings) -> CountingTarget:
    CountingTarget.chunk_reads = 0
    return CountingTarget("t1", settings.backup_targets[0].path)


def test_incremental_reads_only_the_changed_blocks_and_never_the_parent(xfs, settings, target, tmp_path):
    rng = random.Random(1)
    disk = make_disk(xfs / "a.disk", 64 * MiB, rng)
    s1 = snapshot_of(disk, "s1")
    m1 = backup(settings, target, s1, "s1", None)
    assert m1.disks[0].change_method is ChangeMethod.FULL and m1.disks[0].handle_identity
    scatter(disk, rng, 64 * MiB // B // 50)  # 2 % of the blocks, scattered: nearly every chunk is touched
    s2 = snapshot_of(disk, "s2")
    m2 = backup(settings, target, s2, "s2", later(file_snapshot("s1", {"vda": s1})))
    record, truth = m2.disks[0], changed_bytes(s1, s2)
    assert record.change_method is ChangeMethod.FIEMAP
    assert truth <= record.read_bytes <= 1.5 * truth  # reads ≈ the changed bytes, not the touched chunks
    assert record.diff_bytes is not None and record.diff_bytes >= truth
    assert m2.written_bytes <= 1.2 * truth + 64 * 1024  # deltas of the changed blocks (text compresses)
    assert CountingTarget.chunk_reads == 0  # no parent read back, decompressed or verified
    for name, snap in (("s1", s1), ("s2", s2)):
        assert restored_sha(settings, tmp_path, name) == sha(snap)


def test_an_unchanged_disk_reads_nothing_and_a_same_data_rewrite_stores_nothing(xfs, settings, target, tmp_path):
    rng = random.Random(2)
    disk = make_disk(xfs / "b.disk", 32 * MiB, rng)
    s1 = snapshot_of(disk, "s1")
    m1 = backup(settings, target, s1, "s1", None)
    s2 = snapshot_of(disk, "s2")
    m2 = backup(settings, target, s2, "s2", later(file_snapshot("s1", {"vda": s1})))
    assert (m2.disks[0].change_method, m2.read_bytes, m2.written_bytes, m2.disks[0].chunks) == (
        ChangeMethod.FIEMAP, 0, 0, [])
    scatter(disk, rng, 200, same=True)  # rewritten with identical bytes: new physical blocks, same content
    s3 = snapshot_of(disk, "s3")
    m3 = backup(settings, target, s3, "s3", later(file_snapshot("s1", {"vda": s1}), 2))
    assert m3.disks[0].change_method is ChangeMethod.FIEMAP and m3.read_bytes > 0
    assert m3.written_bytes == 0 and m3.disks[0].chunks == []  # reported changed, found equal by digest
    assert restored_sha(settings, tmp_path, "s3") == sha(s3) and m1.kind.value == "full"


def test_incremental_after_revert_and_after_the_parent_snapshot_was_replaced(xfs, settings, target, tmp_path):
    rng = random.Random(3)
    disk = make_disk(xfs / "c.disk", 32 * MiB, rng)
    s1 = snapshot_of(disk, "s1")
    t1 = file_snapshot("s1", {"vda": s1}).created
    backup(settings, target, s1, "s1", t1)
    scatter(disk, rng, 300)
    s2 = snapshot_of(disk, "s2")
    backup(settings, target, s2, "s2", later(file_snapshot("s1", {"vda": s1}, t1), 1))
    # revert to s1 the way the file driver does (a clone of the snapshot renamed over the disk), then write
    staged = disk.with_name(disk.name + ".kvmkit-new")
    clone(s1, staged)
    os.rename(staged, disk)
    scatter(disk, rng, 100)
    s3 = snapshot_of(disk, "s3")
    m3 = backup(settings, target, s3, "s3", later(file_snapshot("s1", {"vda": s1}, t1), 2))
    assert m3.parent == "s2" and m3.disks[0].change_method is ChangeMethod.FIEMAP
    assert restored_sha(settings, tmp_path, "s3") == sha(s3)
    # the parent's snapshot file deleted and re-created under its name: extent maps are not trusted any more
    s3.unlink()
    clone(disk, s3)
    scatter(disk, rng, 50)
    s4 = snapshot_of(disk, "s4")
    m4 = backup(settings, target, s4, "s4", later(file_snapshot("s1", {"vda": s1}, t1), 3))
    assert m4.disks[0].change_method is ChangeMethod.HASHES
    assert restored_sha(settings, tmp_path, "s4") == sha(s4)


def test_a_damaged_or_missing_block_index_costs_reads_not_correctness(xfs, settings, target, tmp_path):
    rng = random.Random(4)
    disk = make_disk(xfs / "d.disk", 16 * MiB, rng)
    s1 = snapshot_of(disk, "s1")
    t1 = file_snapshot("s1", {"vda": s1}).created
    backup(settings, target, s1, "s1", t1)
    idx = index_path(settings.state_dir, "t1", target.location, file_snapshot("s1", {"vda": s1}).vm_uuid, "vda")
    assert idx.stat().st_mode & 0o777 == 0o600
    blob = bytearray(idx.read_bytes())
    for at in range(100, len(blob), 5000):
        blob[at] ^= 0x55  # scribble over many records
    idx.write_bytes(bytes(blob))
    scatter(disk, rng, 40)
    s2 = snapshot_of(disk, "s2")
    m2 = backup(settings, target, s2, "s2", later(file_snapshot("s1", {"vda": s1}, t1)))
    assert m2.disks[0].change_method is ChangeMethod.FIEMAP
    assert m2.read_bytes > 1.5 * changed_bytes(s1, s2)  # damaged records: those chunks were read whole
    assert CountingTarget.chunk_reads == 0
    assert restored_sha(settings, tmp_path, "s2") == sha(s2)


def test_without_reflink_the_chunk_hashes_find_the_changes_without_reading_the_parent(ext4, settings, target,
                                                                                       tmp_path):
    rng = random.Random(5)
    disk = make_disk(ext4 / "e.disk", 16 * MiB, rng)
    s1 = snapshot_of(disk, "s1", reflink=False)
    t1 = file_snapshot("s1", {"vda": s1}).created
    backup(settings, target, s1, "s1", t1)
    scatter(disk, rng, 60)
    s2 = snapshot_of(disk, "s2", reflink=False)
    m2 = backup(settings, target, s2, "s2", later(file_snapshot("s1", {"vda": s1}, t1)))
    truth = changed_bytes(s1, s2)
    assert m2.disks[0].change_method is ChangeMethod.HASHES
    assert m2.written_bytes <= 1.2 * truth + 64 * 1024  # deltas from the index's block digests
    assert CountingTarget.chunk_reads == 0
    assert restored_sha(settings, tmp_path, "s2") == sha(s2)


def test_an_incremental_on_a_target_of_sha256_named_chunks_stores_only_what_changed(tmp_path, settings, target):
    """Backups made before chunks were named by block tree: unchanged chunks are recognised by their old name."""
    rng = random.Random(6)
    disk = make_disk(tmp_path / "f.disk", 16 * MiB, rng)
    s1 = tmp_path / "f@s1"
    s1.write_bytes(disk.read_bytes())
    t1 = file_snapshot("s1", {"vda": s1}).created
    m1 = backup(settings, target, s1, "s1", t1)
    # rewrite the first backup as an older kvmkit wrote it: chunks named by sha256 of their bytes, no index
    import hashlib

    from kvmkit.backup import codec
    from kvmkit.backup.store import chunk_key, manifest_key

    record, data = m1.disks[0], s1.read_bytes()
    renamed = []
    for index, _name in record.chunks:
        raw = data[index * MiB: (index + 1) * MiB]
        old = hashlib.sha256(raw).hexdigest()
        target._put(chunk_key(old), codec.encode(raw, "zstd"))
        renamed.append((index, old))
    record.chunks, record.handle_identity, record.content_digest, m1.format = renamed, None, None, 1  # no digest yet
    target._put(manifest_key(m1.vm_uuid, "s1"), m1.model_dump_json().encode())
    scatter(disk, rng, 30)
    s2 = tmp_path / "f@s2"
    s2.write_bytes(disk.read_bytes())
    m2 = backup(settings, target, s2, "s2", later(file_snapshot("s1", {"vda": s1}, t1)))
    changed_chunks = {i for i in range(16) if data[i * MiB: (i + 1) * MiB] != s2.read_bytes()[i * MiB: (i + 1) * MiB]}
    assert m2.disks[0].change_method is ChangeMethod.HASHES
    assert {i for i, _ in m2.disks[0].chunks} == changed_chunks  # the unchanged ones kept their old names
    assert restored_sha(settings, tmp_path, "s2") == sha(s2)


def test_a_state_dir_that_cannot_hold_an_index_costs_reads_not_the_backup(xfs, tmp_path):
    from kvmkit.config import BackupTarget, Settings

    blocked = tmp_path / "state"
    blocked.write_text("a file where the state folder should be")
    (tmp_path / "target").mkdir()
    settings = Settings(state_dir=blocked, backup_targets=[BackupTarget(name="t1", path=tmp_path / "target")])
    store = DirTarget("t1", tmp_path / "target")
    rng = random.Random(8)
    disk = make_disk(xfs / "g.disk", 8 * MiB, rng)
    s1 = snapshot_of(disk, "s1")
    t1 = file_snapshot("s1", {"vda": s1}).created
    backup(settings, store, s1, "s1", t1)
    scatter(disk, rng, 20)
    s2 = snapshot_of(disk, "s2")
    m2 = backup(settings, store, s2, "s2", later(file_snapshot("s1", {"vda": s1}, t1)))
    assert m2.disks[0].change_method is ChangeMethod.FIEMAP
    assert m2.read_bytes > 1.5 * changed_bytes(s1, s2)  # no index: the touched chunks were read whole
    assert restored_sha(settings, tmp_path, "s2") == sha(s2)
