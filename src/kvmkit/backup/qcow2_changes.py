"""Which guest bytes of a qcow2 disk may differ between two reflink snapshots of its top file, without reading data.

A qcow2 file is a container: guest offsets map to host (file) offsets through its L1/L2 tables, and what is not
allocated in the top file comes from the backing chain (the template). So the raw-file answer of changes.py — the
changed *file* ranges — is not the changed *guest* ranges. Two facts are combined instead:

1. QEMU's own allocation map of each snapshot (`qemu-img map --output=json`: guest range → depth, zero, data, host
   offset). Where the two maps disagree (a cluster newly allocated, moved to another host cluster, zeroed,
   discarded, …) the guest range changed. Where both read the backing chain (depth > 0) or both read zeros, it did
   not, provided the backing chain is the same file for both (checked: same layers, formats, inodes, sizes, mtimes).
2. Where both maps send a guest range to the *same* host range of the top file, QEMU rewrote the data in place or
   not at all. The FIEMAP comparison of the two containers (changes.py) says which host ranges no longer share
   their physical blocks (a write into a reflinked block is copy-on-write); those host ranges are mapped back to
   guest ranges.

qcow2 metadata (header, L1/L2 tables, refcounts) is rewritten all the time, but only data clusters' host ranges are
ever looked at, so that churn costs nothing. Memory is O(map entries) (three int64 per top-file mapping, sorted by
host offset with NumPy), never O(disk size); the only bytes read are the two qcow2 headers, the two maps and the
two extent maps. The qemu-img edge (info, map, header) lives in qcow2_map.py.

Untrusted (the caller falls back to hashing every chunk) when: the format is not qcow2, the files are not regular
files on one filesystem, virtual sizes, cluster sizes or backing chains differ, an image is encrypted, corrupt or
keeps its data in an external data file, the top file holds compressed clusters (no host offset to compare), the
filesystem has no FIEMAP, a map is malformed, or the newer snapshot shares no data block with the older one (not
reflink siblings: a plain copy would make every top-file cluster "changed").

The backing chain is checked at call time: a template rewritten in place between the two snapshots (which would
also corrupt every overlay on it) is not detectable here.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvmkit.backup import changes, fiemap
from kvmkit.backup.qcow2_map import Layer, MapEntry, MapStream, Untrusted, backing_name, chain, parse_map

__all__ = ["GuestChanges", "MapEntry", "Untrusted", "changed_guest_ranges", "compare", "compare_maps",
           "host_to_guest", "parse_map"]

log = logging.getLogger(__name__)

QCOW2_MAGIC = b"QFI\xfb"
END = 1 << 62  # "to the end of the file" for the host sweep
ZERO, BACKING, TOP, OTHER = 0, 1, 2, 3  # what a guest range reads (see _kind)


@dataclass(frozen=True, slots=True)
class GuestChanges:
    """The result: sorted, merged guest ranges as an (n, 2) int64 array of (offset, length), and what it cost."""

    ranges: np.ndarray
    virtual_size: int
    map_entries: int  # entries of both maps
    top_mappings: int  # guest ranges mapped to the same host range in both: checked by FIEMAP

    @property
    def changed_bytes(self) -> int:
        return int(self.ranges[:, 1].sum()) if len(self.ranges) else 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for block in range(0, len(self.ranges), 4096):  # Python ints for one block of rows at a time
            offsets, lengths = self.ranges[block: block + 4096].T.tolist()
            yield from zip(offsets, lengths, strict=True)


def changed_guest_ranges(older: Path, newer: Path, fmt: str) -> Iterator[tuple[int, int]] | None:
    """Guest byte ranges (offset, length), sorted and merged, outside of which the newer snapshot reads exactly as
    the older one; None when that cannot be trusted (the reason is logged), and the caller hashes every chunk.

    `older` and `newer` are two reflink snapshots of one qcow2 top file (the parent backup's snapshot file,
    untouched since, and this one), `fmt` the format the domain XML gives the disk. In backup/create.py, beside
    `_fiemap_changes` (which keeps serving raw files): for a GuestViewReader whose parent record is a file
    snapshot with a matching `handle_identity`, call
        ranges = qcow2_changes.changed_guest_ranges(Path(parent.handle), Path(disk.handle), "qcow2")
    and, when it is not None, feed it to `changes.chunk_blocks(ranges, size, chunk_size, codec.DELTA_BLOCK)` as the
    fiemap method does (`size` is the guest size); the blocks are then read through the guest view as today.
    Call it only when the parent record was a qcow2 read through its guest view too (DiskBackup keeps no format
    today): the older file is run through qemu-img as qcow2, though only after its header names the same
    backing file as the newer one's.
    All work (two `qemu-img map`, two FIEMAP walks) is done before this returns; the iterator only hands out the
    result."""
    try:
        result = compare(older, newer, fmt)
    except Untrusted as exc:
        log.info("qcow2 snapshots not comparable by map: hashing instead",
                 extra={"older": str(older), "newer": str(newer), "reason": str(exc)})
        return None
    log.info("qcow2 changes from maps", extra={"older": str(older), "newer": str(newer),
                                               "changed_bytes": result.changed_bytes, "ranges": len(result.ranges),
                                               "map_entries": result.map_entries})
    return iter(result)


def compare(older: Path, newer: Path, fmt: str) -> GuestChanges:
    """changed_guest_ranges with the figures kept, raising Untrusted instead of returning None."""
    if fmt != "qcow2":
        raise Untrusted(f"format {fmt!r} is not qcow2")
    older, newer = Path(os.path.abspath(older)), Path(os.path.abspath(newer))
    fds: list[int] = []
    try:
        for path in (older, newer):
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
            except OSError as exc:
                raise Untrusted(f"{path}: {exc.strerror}") from exc
        old_fd, new_fd = fds
        old_st, new_st = _check_file(old_fd, older), _check_file(new_fd, newer)
        if old_st.st_dev != new_st.st_dev:
            raise Untrusted("the snapshots lie on different filesystems")
        if backing_name(old_fd) != backing_name(new_fd):  # before qemu-img follows the older one's name
            raise Untrusted("the backing chains differ (backing file names)")
        size = _same_chain(chain(older), chain(newer))
        with MapStream(older) as old_map, MapStream(newer) as new_map:
            counted_old, counted_new = _Counted(old_map), _Counted(new_map)
            changed, top = _collect(compare_maps(counted_old, counted_new, size))
        for fd, path, before in ((old_fd, older, old_st), (new_fd, newer, new_st)):
            _same_file(fd, path, before)  # the paths qemu-img read are still these files, unwritten
        rewritten = host_to_guest(top, _host_changes(old_fd, new_fd))
        return GuestChanges(ranges=_merge(changed, rewritten), virtual_size=size,
                            map_entries=counted_old.count + counted_new.count, top_mappings=len(top))
    finally:
        for fd in fds:
            os.close(fd)


# --- the files and their chains -------------------------------------------------------------------------------
def _check_file(fd: int, path: Path) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise Untrusted(f"{path} is not a regular file")
    if os.pread(fd, 4, 0) != QCOW2_MAGIC:
        raise Untrusted(f"{path} is not a qcow2 image")
    return info


def _same_file(fd: int, path: Path, before: os.stat_result) -> None:
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise Untrusted(f"{path} went away during the comparison") from exc
    after = os.fstat(fd)
    identity = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
    if (now.st_dev, now.st_ino) != identity[:2] or (after.st_dev, after.st_ino, after.st_size,
                                                    after.st_mtime_ns) != identity:
        raise Untrusted(f"{path} was replaced or written during the comparison")


def _same_chain(old: list[Layer], new: list[Layer]) -> int:
    """The common virtual size, when both tops are plain qcow2 over the very same backing files."""
    for layer in (old[0], new[0]):
        data = layer.format_specific.data if layer.format_specific is not None else {}
        if layer.format != "qcow2":
            raise Untrusted(f"{layer.filename} is {layer.format}, not qcow2")
        if layer.encrypted or "encrypt" in data:
            raise Untrusted(f"{layer.filename} is encrypted")
        if "data-file" in data:
            raise Untrusted(f"{layer.filename} keeps its data in an external data file")
        if data.get("corrupt") is True:
            raise Untrusted(f"{layer.filename} is marked corrupt")
    if old[0].virtual_size != new[0].virtual_size:
        raise Untrusted(f"virtual size changed ({old[0].virtual_size} → {new[0].virtual_size})")
    if old[0].cluster_size != new[0].cluster_size:
        raise Untrusted("cluster size differs")
    if [_identity(layer) for layer in old[1:]] != [_identity(layer) for layer in new[1:]]:
        raise Untrusted("the backing chains differ (other files, formats or sizes)")
    return old[0].virtual_size


def _identity(layer: Layer) -> tuple[object, ...]:
    try:
        info = os.stat(layer.filename)
    except OSError as exc:  # a protocol (rbd:, nbd:, json:) backing: nothing to compare it by
        raise Untrusted(f"backing file {layer.filename} cannot be identified") from exc
    return layer.format, layer.virtual_size, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


class _Counted:
    def __init__(self, entries: Iterable[MapEntry]) -> None:
        self.entries, self.count = entries, 0

    def __iter__(self) -> Iterator[MapEntry]:
        for entry in self.entries:
            self.count += 1
            yield entry


# --- pure comparison -------------------------------------------------------------------------------------------
def _kind(entry: MapEntry) -> int:
    """What the guest reads there. ZERO: zeros. BACKING: not allocated in the top file, so the backing chain's
    bytes at this guest offset (the same for both snapshots once the chains are the same, whatever depth serves
    them). TOP: the top file's bytes at `offset`. OTHER: anything else, never taken as unchanged."""
    if entry.depth == 0 and entry.data and not entry.zero and (entry.offset is None or entry.compressed):
        raise Untrusted(f"guest offset {entry.start} is compressed or encrypted in the top file (no host offset)")
    if entry.zero:
        return ZERO
    if entry.depth > 0:
        return BACKING
    return TOP if entry.data else OTHER


def _checked(entries: Iterable[MapEntry], size: int) -> Iterator[MapEntry]:
    """The entries in guest order, contiguous from 0 to size, empty ones dropped; anything else is untrusted."""
    position = 0
    for entry in entries:
        if entry.length == 0:
            continue
        if entry.start != position or entry.start + entry.length > size:
            raise Untrusted(f"map entry at {entry.start} does not follow the previous one (at {position})")
        position = entry.start + entry.length
        yield entry
    if position != size:
        raise Untrusted(f"map ends at {position}, the disk at {size}")


def compare_maps(old: Iterable[MapEntry], new: Iterable[MapEntry], size: int) -> Iterator[tuple[int, int, int]]:
    """One merge pass over the two maps (streamed): (guest offset, length, host offset) where host is -1 for a
    range that changed by its mapping alone, or the host offset (the same in both) of a top-file range whose
    bytes FIEMAP must judge. Adjacent pieces of the same sort are merged."""
    a, b = _checked(old, size), _checked(new, size)
    ea, eb = next(a, None), next(b, None)
    position, pending = 0, None
    while ea is not None and eb is not None:
        end = min(ea.start + ea.length, eb.start + eb.length)
        ka, kb = _kind(ea), _kind(eb)
        piece = None
        if ka == kb == TOP:
            host_a, host_b = ea.offset + position - ea.start, eb.offset + position - eb.start  # type: ignore[operator]
            piece = (position, end - position, host_b if host_a == host_b else -1)
        elif not (ka == kb and ka in (ZERO, BACKING)):
            piece = (position, end - position, -1)
        if piece is not None:
            if pending is not None and _joins(pending, piece):
                pending = (pending[0], pending[1] + piece[1], pending[2])
            else:
                if pending is not None:
                    yield pending
                pending = piece
        position = end
        if ea.start + ea.length == end:
            ea = next(a, None)
        if eb.start + eb.length == end:
            eb = next(b, None)
    if pending is not None:
        yield pending


def _joins(first: tuple[int, int, int], second: tuple[int, int, int]) -> bool:
    if first[0] + first[1] != second[0] or (first[2] < 0) != (second[2] < 0):
        return False
    return first[2] < 0 or first[2] + first[1] == second[2]


class _Growing:
    """An int64 table that grows by doubling: the O(map entries) state, 8 bytes per cell, no Python objects."""

    def __init__(self, columns: int) -> None:
        self.rows, self.cells = 0, np.empty((1024, columns), dtype=np.int64)

    def add(self, *row: int) -> None:
        if self.rows == len(self.cells):
            self.cells = np.concatenate([self.cells, np.empty_like(self.cells)])
        self.cells[self.rows] = row
        self.rows += 1

    def table(self) -> np.ndarray:
        return self.cells[: self.rows]


def _collect(pieces: Iterable[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(changed guest ranges as (offset, length) rows, top mappings as (guest, host, length) rows)."""
    changed, top = _Growing(2), _Growing(3)
    for guest, length, host in pieces:
        if host < 0:
            changed.add(guest, length)
        else:
            top.add(guest, host, length)
    return changed.table(), top.table()


def host_to_guest(top: np.ndarray, host_changes: np.ndarray) -> np.ndarray:
    """The guest ranges, as (offset, length) rows sorted by guest offset, whose host bytes lie in a changed host
    range. `top` holds (guest, host, length) rows; host_changes (offset, length) rows, sorted and disjoint
    (changes.py's output). Vectorised interval intersection: int64 arrays only, O(rows) memory.
    Raises Untrusted if two guest ranges share host bytes (a corrupt image), or if no top-file byte is still
    shared (the files are not reflink siblings, and FIEMAP would only say "everything changed")."""
    if len(top) == 0:
        return np.empty((0, 2), dtype=np.int64)
    top = top[np.argsort(top[:, 1], kind="stable")]
    hosts, ends = top[:, 1], top[:, 1] + top[:, 2]
    if np.any(hosts[1:] < ends[:-1]):
        raise Untrusted("two guest ranges map to the same host bytes")
    starts, stops = host_changes[:, 0], host_changes[:, 0] + host_changes[:, 1]
    first = np.searchsorted(ends, starts, side="right")  # the first top range ending after the change starts
    last = np.searchsorted(hosts, stops, side="left")  # the first top range starting at or after its end
    counts = np.maximum(last - first, 0)
    change = np.repeat(np.arange(len(starts)), counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    mapping = np.repeat(first, counts) + within
    lo, hi = np.maximum(starts[change], hosts[mapping]), np.minimum(stops[change], ends[mapping])
    if int((hi - lo).sum()) >= int(top[:, 2].sum()):
        raise Untrusted("the newer snapshot shares no data block with the older one (not reflink siblings)")
    guest = np.column_stack([top[mapping, 0] + lo - hosts[mapping], hi - lo])
    return guest[np.argsort(guest[:, 0], kind="stable")]


def _host_changes(old_fd: int, new_fd: int) -> np.ndarray:
    """changes.py's changed file ranges of the two containers as (offset, length) rows, then everything past the
    longer one's end (a map offset there would read zeros in both; counting it changed assumes nothing)."""
    old_size, new_size = os.fstat(old_fd).st_size, os.fstat(new_fd).st_size
    table = _Growing(2)
    try:
        for offset, length in changes.iter_changed_ranges(fiemap.iter_extent_map(old_fd, old_size),
                                                          fiemap.iter_extent_map(new_fd, new_size), old_size,
                                                          new_size):
            table.add(offset, length)
    except changes.UnsortedMap as exc:
        raise Untrusted(f"extent map out of order: {exc}") from exc
    except OSError as exc:
        raise Untrusted(f"no FIEMAP on this filesystem ({exc.strerror})") from exc
    longer = max(old_size, new_size)
    table.add(longer, END - longer)
    return table.table()


def _merge(*tables: np.ndarray) -> np.ndarray:
    """(offset, length) tables → one table sorted by offset, touching and overlapping ranges merged."""
    rows = np.concatenate([t.reshape(-1, 2) for t in tables])
    if len(rows) == 0:
        return rows
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    starts, reach = rows[:, 0], np.maximum.accumulate(rows[:, 0] + rows[:, 1])
    opens = np.ones(len(rows), dtype=bool)
    opens[1:] = starts[1:] > reach[:-1]  # a gap before this range: a new run starts here
    heads = np.flatnonzero(opens)
    tails = np.append(heads[1:] - 1, len(rows) - 1)
    return np.column_stack([starts[heads], reach[tails] - starts[heads]])
