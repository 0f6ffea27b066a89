"""The backup's read side and its chunk pipeline: reads into reused buffers, and what that must not break —
short last chunks, all-zero chunks, many chunks in flight, and targets that hold zlib and zstd chunks at once."""

from __future__ import annotations

import os
from pathlib import Path

from kvmkit.backup import codec, restore
from kvmkit.backup.codec import FRAME, ZLIB, ZSTD
from kvmkit.backup.create import Backup, backup_snapshot
from kvmkit.backup.store import DirTarget
from kvmkit.snapshot.drivers.reading import FileReader, pread_into
from tests.backup.conftest import MiB, file_snapshot, later, randbytes, sha, sparse_file


def test_read_into_fills_the_callers_buffer_and_reads_past_the_end_as_zeros(tmp_path):
    path = tmp_path / "disk"
    data = randbytes(3 * MiB + 5)
    path.write_bytes(data)
    reader = FileReader(path)
    try:
        buffer = bytearray(MiB)
        assert reader.read_into(MiB, buffer) is buffer and buffer == data[MiB: 2 * MiB]
        assert reader.read_into(3 * MiB, buffer) is buffer
        assert buffer == data[3 * MiB:] + bytes(MiB - 5)  # a file that shrank under us: zeros, like a hole
    finally:
        reader.close()


def test_pread_into_past_the_end_of_the_file_gives_zeros(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_into(fd, 2, bytearray(10)) == b"cdef" + bytes(6)
        assert pread_into(fd, 100, bytearray(b"stale")) == bytes(5)  # the buffer's old content never leaks
    finally:
        os.close(fd)


def test_many_chunks_in_flight_through_reused_buffers_restore_byte_for_byte(tmp_path, settings):
    """Every worker reuses one buffer: a chunk stored from a buffer already refilled would show up here."""
    chunks = [(randbytes(MiB // 2) + (b"text %d " % i) * MiB)[:MiB] for i in range(40)]
    chunks[7] = bytes(MiB)  # allocated zeros: read, recognised, not stored
    chunks[12] = chunks[3]  # a duplicate: stored once
    disk = sparse_file(tmp_path / "vda", 40 * MiB + 4096 + 17, [(i * MiB, c) for i, c in enumerate(chunks)]
                       + [(40 * MiB, randbytes(4096 + 17))])  # a short last chunk
    store = DirTarget("t1", settings.backup_targets[0].path)
    manifest = Backup(settings, store, "zstd", lambda _n: None, workers=8).run(file_snapshot("s1", {"vda": disk}))
    record = manifest.disks[0]
    assert [i for i, _ in record.chunks] == [i for i in range(41) if i != 7]
    assert dict(record.chunks)[12] == dict(record.chunks)[3] == codec.chunk_id(chunks[3])
    stored = [f for f in (settings.backup_targets[0].path / "chunks").rglob("*") if f.is_file()]
    assert len(stored) == 39  # the duplicate has one name (two workers may both have written it, concurrently)
    for index, digest in record.chunks:
        assert store.get_chunk(digest) == disk.read_bytes()[index * MiB: (index + 1) * MiB]
    out = tmp_path / "restored"
    restore.restore(settings, "vm1", "s1", to=[f"vda={out}"])
    assert sha(out) == sha(disk)


def frame_codecs(blob: bytes) -> set[int]:
    found, position = set(), 5
    while position < len(blob):
        codec, length = FRAME.unpack_from(blob, position)
        found.add(codec)
        position += FRAME.size + length
    return found


def test_a_target_with_zlib_chunks_takes_zstd_backups_and_restores_both(tmp_path, settings):
    """Existing targets were written with zlib: switching the default to zstd must keep them whole."""
    text = b"kvmkit keeps old chunks readable. " * 40000
    first = sparse_file(tmp_path / "vda@s1", 8 * MiB, [(0, text[:MiB]), (2 * MiB, randbytes(MiB))])
    snap1 = file_snapshot("s1", {"vda": first})
    backup_snapshot(settings.model_copy(update={"backup_targets": [
        settings.backup_targets[0].model_copy(update={"compression": "zlib"})]}), snap1)
    second = sparse_file(tmp_path / "vda@s2", 8 * MiB, [(0, text[:MiB]), (2 * MiB, randbytes(MiB)),
                                                        (4 * MiB, text[7: MiB + 7])])
    assert settings.backup_targets[0].compression == "zstd"  # the default
    m2 = backup_snapshot(settings, file_snapshot("s2", {"vda": second}, when=later(snap1)))
    assert m2.kind.value == "incremental" and m2.compression == "zstd"
    chunk_dir = settings.backup_targets[0].path / "chunks"
    codecs = set().union(*(frame_codecs(p.read_bytes()) for p in chunk_dir.rglob("*") if p.is_file()))
    assert {ZLIB, ZSTD} <= codecs
    for snap, disk in (("s1", first), ("s2", second)):
        out = tmp_path / f"restored-{snap}"
        restore.restore(settings, "vm1", snap, to=[f"vda={out}"])
        assert sha(out) == sha(disk)


def test_a_block_device_is_read_whole_since_it_reports_no_holes(tmp_path):
    """lseek(SEEK_DATA) on a block device finds "no data": taken literally, a StorPool snapshot's device would
    back up as zeros. The reader reads it all instead."""
    import hashlib
    import subprocess

    image = sparse_file(tmp_path / "dev.img", 8 * MiB, [(5 * MiB, randbytes(MiB))])
    loop = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        reader = FileReader(Path(loop))
        try:
            assert not reader.regular and reader.size == 8 * MiB
            assert reader.data_extents() == [(0, 8 * MiB)]
            got = hashlib.sha256()
            buffer = bytearray(MiB)
            for offset, length in reader.data_extents():
                for at in range(offset, offset + length, MiB):
                    got.update(reader.read_into(at, buffer))
            assert got.hexdigest() == sha(image)
        finally:
            reader.close()
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
