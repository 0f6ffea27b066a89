"""Changed ranges from two reflink snapshots' extent maps: exact where the maps agree, never missing a change."""

from __future__ import annotations

import fcntl
import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmkit.backup import fiemap
from kvmkit.backup.changes import block_runs, changed_ranges, chunk_blocks
from kvmkit.backup.fiemap import MappedExtent, extent_map
from tests.fixtures.loopfs import loop_fs

FICLONE = 0x40049409
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
B = 4096
E = MappedExtent


# pure ----------------------------------------------------------------------------------------------------------
def test_the_same_physical_extents_are_unchanged_and_a_moved_block_is_changed():
    old = [E(0, 1000 * B, 8 * B, 0), E(16 * B, 2000 * B, 4 * B, fiemap.SHARED)]
    new = [E(0, 1000 * B, 3 * B, fiemap.SHARED), E(3 * B, 5000 * B, B, 0), E(4 * B, 1004 * B, 4 * B, 0),
           E(16 * B, 2000 * B, 4 * B, fiemap.LAST)]
    assert changed_ranges(old, new, 20 * B, 20 * B) == [(3 * B, B)]


def test_holes_and_unwritten_extents_read_as_zeros_so_they_match_but_data_over_them_does_not():
    old = [E(4 * B, 700 * B, 4 * B, fiemap.UNWRITTEN)]
    new = [E(6 * B, 900 * B, 2 * B, 0)]  # 4-5 became a hole (zeros either way); 6-7 got data
    assert changed_ranges(old, new, 10 * B, 10 * B) == [(6 * B, 2 * B)]
    # an unwritten extent that became written in place (same physical) is a change too
    assert changed_ranges(old, [E(4 * B, 700 * B, 4 * B, 0)], 10 * B, 10 * B) == [(4 * B, 4 * B)]


@pytest.mark.parametrize("flag", [fiemap.UNKNOWN | fiemap.DELALLOC, fiemap.DATA_INLINE | fiemap.NOT_ALIGNED,
                                  fiemap.ENCODED, fiemap.DATA_ENCRYPTED, fiemap.DATA_TAIL])
def test_an_extent_whose_physical_address_means_nothing_is_always_changed(flag):
    same = [E(0, 77 * B, 2 * B, flag)]
    assert changed_ranges(same, same, 2 * B, 2 * B) == [(0, 2 * B)]


def test_truncate_and_extend_report_the_tail_and_overlaps_are_distrusted():
    data = [E(0, 10 * B, 8 * B, 0)]
    assert changed_ranges(data, [E(0, 10 * B, 4 * B, 0)], 8 * B, 4 * B) == [(4 * B, 4 * B)]
    assert changed_ranges(data, data, 8 * B, 12 * B) == [(8 * B, 4 * B)]
    overlapping = [E(0, 10 * B, 4 * B, 0), E(2 * B, 10 * B, 4 * B, 0)]
    assert changed_ranges(overlapping, overlapping, 8 * B, 8 * B) == [(0, 6 * B)]


@st.composite
def extent_maps(draw, blocks: int = 64) -> list[MappedExtent]:
    """A FIEMAP-like map: sorted, non-overlapping, block-aligned extents, physical addresses from a small pool
    (so equal addresses happen), a few flags."""
    out, pos = [], draw(st.integers(0, 4))
    while pos < blocks:
        length = draw(st.integers(1, 8))
        flags = draw(st.sampled_from([0, 0, 0, fiemap.SHARED, fiemap.UNWRITTEN, fiemap.DELALLOC | fiemap.UNKNOWN]))
        out.append(E(pos * B, draw(st.integers(0, 6)) * 8 * B, length * B, flags))
        pos += length + draw(st.integers(0, 3))
    return out


def block_class(extents: list[MappedExtent], block: int) -> tuple:
    for ext in extents:
        if ext.logical <= block * B < ext.logical + ext.length:
            if ext.flags & fiemap.OPAQUE:
                return ("unknown", block)  # never equal to anything
            if ext.flags & fiemap.UNWRITTEN:
                return ("zero",)
            return ("data", ext.physical + block * B - ext.logical)
    return ("zero",)


@settings(max_examples=300, deadline=None)
@given(old=extent_maps(), new=extent_maps(), old_blocks=st.integers(1, 64), new_blocks=st.integers(1, 64))
def test_the_streamed_merge_is_exactly_a_block_by_block_comparison(old, new, old_blocks, new_blocks):
    common = min(old_blocks, new_blocks)
    expected = {b for b in range(common)
                if block_class(old, b)[0] == "unknown" or block_class(old, b) != block_class(new, b)}
    expected |= set(range(common, max(old_blocks, new_blocks)))
    ranges = changed_ranges(old, new, old_blocks * B, new_blocks * B)
    assert covered(ranges) == expected
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(ranges))  # sorted, merged


def test_ranges_are_cut_into_chunks_of_blocks_and_runs():
    ranges = [(B - 1, 2), (3 * B, 5 * B), (16 * B, B)]  # a range across a block edge touches both blocks
    assert list(chunk_blocks(ranges, 20 * B, 8 * B, B)) == [(0, [0, 1, 3, 4, 5, 6, 7]), (2, [0])]
    assert block_runs([0, 1, 3, 4, 5, 7]) == [(0, 2), (3, 3), (7, 1)]


# real XFS ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xfs(tmp_path_factory) -> Path:
    with loop_fs(tmp_path_factory.mktemp("xfs"), "xfs", 512) as mnt:
        yield mnt


def clone(src: Path, dst: Path) -> None:
    with src.open("rb") as a, dst.open("wb") as b:
        fcntl.ioctl(b.fileno(), FICLONE, a.fileno())


def fiemap_changes(old: Path, new: Path) -> list[tuple[int, int]]:
    with old.open("rb") as a, new.open("rb") as b:
        return changed_ranges(extent_map(a.fileno()), extent_map(b.fileno()), os.fstat(a.fileno()).st_size,
                              os.fstat(b.fileno()).st_size)


def differing_blocks(old: Path, new: Path) -> set[int]:
    """Brute force: every 4 KiB block whose bytes differ (a file shorter than the other reads as zeros there...
    but a size change is a change in itself, so past the shorter end every block counts)."""
    a, b = old.read_bytes(), new.read_bytes()
    common = min(len(a), len(b))
    out = {i // B for i in range(0, common, B) if a[i: i + B] != b[i: i + B]}
    return out | set(range(common // B, -(-max(len(a), len(b)) // B)))


def covered(ranges: list[tuple[int, int]]) -> set[int]:
    return {blk for off, length in ranges for blk in range(off // B, -(-(off + length) // B))}


def apply(path: Path, ops: list[tuple], rng: random.Random) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        for op, block, count in ops:
            size = os.fstat(fd).st_size
            if op == "write":
                os.pwrite(fd, rng.randbytes(count * B), block * B)
            elif op == "rewrite":  # the same bytes again: a new physical block, the same content
                os.pwrite(fd, os.pread(fd, count * B, block * B), block * B)
            elif op == "zeros":
                os.pwrite(fd, bytes(count * B), block * B)
            elif op == "punch":
                _punch(fd, block * B, count * B)
            elif op == "alloc":  # preallocated, unwritten: reads as zeros
                _fallocate(fd, 0, block * B, count * B)
            elif op == "truncate":
                os.ftruncate(fd, max(0, size - count * B))
            elif op == "extend":
                os.ftruncate(fd, size + count * B)
        os.fsync(fd)
    finally:
        os.close(fd)


def _punch(fd: int, offset: int, length: int) -> None:
    _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, mode, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


OPS = st.lists(st.tuples(st.sampled_from(["write", "write", "rewrite", "zeros", "punch", "alloc", "truncate",
                                                         "extend"]),
                         st.integers(0, 600), st.integers(1, 40)), min_size=1, max_size=25)


@pytest.mark.lab
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, seed=st.integers(0, 2**32 - 1), prefill=st.integers(0, 3))
def test_fiemap_comparison_never_misses_a_changed_block(xfs, ops, seed, prefill):
    """Random writes, same-data rewrites, zero writes, punched holes, preallocation, truncates and extends between
    two reflink snapshots: every block whose bytes differ lies inside a reported range."""
    rng = random.Random(seed)
    disk, a, b = xfs / f"disk-{seed}", xfs / f"a-{seed}", xfs / f"b-{seed}"
    try:
        with disk.open("wb") as fh:
            fh.truncate(512 * B)
            for _ in range(prefill * 20):  # a fragmented disk with holes, as a guest leaves it
                fh.seek(rng.randrange(512) * B)
                fh.write(rng.randbytes(B * rng.randint(1, 8)))
        clone(disk, a)
        apply(disk, ops, rng)
        clone(disk, b)
        ranges = fiemap_changes(a, b)
        assert differing_blocks(a, b) <= covered(ranges)
    finally:
        for path in (disk, a, b):
            path.unlink(missing_ok=True)


@pytest.mark.lab
def test_scattered_writes_are_found_exactly_and_a_rename_between_snapshots_changes_nothing(xfs):
    rng = random.Random(7)
    disk, a, b = xfs / "exact", xfs / "exact-a", xfs / "exact-b"
    with disk.open("wb") as fh:
        fh.write(rng.randbytes(1024 * B))
    clone(disk, a)
    renamed = xfs / "exact-renamed"
    disk.rename(renamed)  # the VM's disk file moved (same filesystem): its extents go with it
    written = sorted(rng.sample(range(1024), 40))
    fd = os.open(renamed, os.O_RDWR)
    for blk in written:
        os.pwrite(fd, rng.randbytes(B), blk * B)
    os.fsync(fd)
    os.close(fd)
    clone(renamed, b)
    assert covered(fiemap_changes(a, b)) == set(written) == differing_blocks(a, b)
    assert fiemap_changes(a, a) == []
    for path in (renamed, a, b):
        path.unlink()


@pytest.mark.lab
def test_maps_longer_than_one_fiemap_page_are_streamed_page_by_page(xfs):
    rng = random.Random(11)
    disk, a, b = xfs / "paged", xfs / "paged-a", xfs / "paged-b"
    with disk.open("wb") as fh:
        fh.truncate(8192 * B)
        for blk in range(0, 8192, 3):  # every third block: ~2700 separate extents, more than two pages
            fh.seek(blk * B)
            fh.write(rng.randbytes(B))
    clone(disk, a)
    fd = os.open(disk, os.O_RDWR)
    for blk in rng.sample(range(8192), 1500):
        os.pwrite(fd, rng.randbytes(B), blk * B)
    os.fsync(fd)
    os.close(fd)
    clone(disk, b)
    with b.open("rb") as fh:
        assert len(extent_map(fh.fileno())) > 2 * fiemap.SLOTS
    assert covered(fiemap_changes(a, b)) == differing_blocks(a, b)
    for path in (disk, a, b):
        path.unlink()
