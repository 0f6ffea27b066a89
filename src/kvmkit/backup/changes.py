"""Which bytes of a file disk changed between two reflink snapshots, from their extent maps alone (pure).

Two reflink snapshots of one disk file share every physical block nothing rewrote in between: a guest write to
a shared block is copy-on-write, so it lands on a new block, and the older snapshot keeps the old one (which
therefore cannot be freed and reused while that snapshot exists). So where both maps put the same logical range
on the same physical range, the bytes are the same, and everywhere else they may differ. That needs no read of
the disk and no QEMU state, costs O(extents), and survives VM restarts and moves of the file on the same
filesystem (a rename keeps the extents).

Conservative by construction — a range is reported unchanged only when that is certain:
    hole / unwritten in both           unchanged (both read as zeros)
    written in both, same physical     unchanged
    anything with an opaque flag       changed (delalloc, inline, encoded, encrypted, unaligned, tail)
    everything else                    changed (so a rewrite of identical data is reported; hashing drops it)
    past the shorter file's end        changed (truncate/extend)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from kvmkit.backup.fiemap import OPAQUE, UNWRITTEN, MappedExtent
from kvmkit.backup.model import ChangeMethod

__all__ = ["ChangeMethod", "UnsortedMap", "block_runs", "changed_ranges", "chunk_blocks", "iter_changed_ranges",
           "segments"]

Extent = tuple[int, int]  # (offset, length)
ZERO, DATA, UNKNOWN = 0, 1, 2
Segment = tuple[int, int, int, int]  # start, end, class, physical address at start (DATA only)


class UnsortedMap(ValueError):
    """An extent map that goes backwards: nothing can be concluded from it (the caller hashes instead)."""


def segments(extents: Iterable[MappedExtent], size: int) -> Iterator[Segment]:
    """The map as sorted, non-overlapping segments clipped to [0, size), streamed (FIEMAP hands extents out in
    logical order, a page at a time: memory stays one page whatever the extent count). Holes are not yielded.
    Overlapping extents (a confused filesystem) become one UNKNOWN segment, so they are reported changed; an
    extent that starts before the previous one raises UnsortedMap."""
    pending: Segment | None = None
    for ext in extents:
        start, end = max(0, ext.logical), min(size, ext.logical + ext.length)
        if ext.length <= 0 or start >= end:
            continue
        kind = UNKNOWN if ext.flags & OPAQUE else ZERO if ext.flags & UNWRITTEN else DATA
        segment = (start, end, kind, ext.physical + (start - ext.logical))
        if pending is not None and start < pending[1]:
            if start < pending[0]:
                raise UnsortedMap(f"extent at {start} after one at {pending[0]}")
            segment = (pending[0], max(end, pending[1]), UNKNOWN, 0)
        elif pending is not None:
            yield pending
        pending = segment
    if pending is not None:
        yield pending


def _at(segment: Segment | None, offset: int, limit: int) -> tuple[int, int, int]:
    """(class, physical address, where this class ends) at offset, given the first segment ending after it."""
    if segment is None:
        return ZERO, 0, limit
    start, end, kind, physical = segment
    if start > offset:
        return ZERO, 0, min(start, limit)  # a hole up to the segment
    return kind, physical + (offset - start) if kind == DATA else 0, min(end, limit)


def iter_changed_ranges(old: Iterable[MappedExtent], new: Iterable[MappedExtent], old_size: int,
                        new_size: int) -> Iterator[Extent]:
    """Byte ranges (sorted, merged) where the new snapshot may differ from the old one: one merge pass over the
    two streamed maps, O(extents) time and O(1) memory."""
    common = min(old_size, new_size)
    a, b = segments(old, common), segments(new, common)
    seg_a, seg_b = next(a, None), next(b, None)
    pos, run_start, run_end = 0, -1, -1
    while pos < common:
        while seg_a is not None and seg_a[1] <= pos:
            seg_a = next(a, None)
        while seg_b is not None and seg_b[1] <= pos:
            seg_b = next(b, None)
        kind_a, phys_a, end_a = _at(seg_a, pos, common)
        kind_b, phys_b, end_b = _at(seg_b, pos, common)
        nxt = min(end_a, end_b)
        same = (kind_a == kind_b == ZERO) or (kind_a == kind_b == DATA and phys_a == phys_b)
        if not same:
            if run_end == pos:
                run_end = nxt
            else:
                if run_end > run_start >= 0:
                    yield run_start, run_end - run_start
                run_start, run_end = pos, nxt
        pos = nxt
    if old_size != new_size:  # truncate or extend: everything past the shorter end
        tail_end = max(old_size, new_size)
        if run_end == common:
            run_end = tail_end
        else:
            if run_end > run_start >= 0:
                yield run_start, run_end - run_start
            run_start, run_end = common, tail_end
    if run_end > run_start >= 0:
        yield run_start, run_end - run_start


def changed_ranges(old: Iterable[MappedExtent], new: Iterable[MappedExtent], old_size: int,
                   new_size: int) -> list[Extent]:
    return list(iter_changed_ranges(old, new, old_size, new_size))


def chunk_blocks(ranges: Iterable[Extent], size: int, chunk_size: int, block: int) -> Iterator[tuple[int, list[int]]]:
    """(chunk index, sorted block indexes within the chunk) for every chunk the ranges touch, in chunk order,
    one chunk at a time (memory: one chunk's block list). Ranges must be sorted; they are clipped to size."""
    current, blocks = -1, []
    per_chunk = chunk_size // block
    for offset, length in ranges:
        end = min(offset + length, size)
        if length <= 0 or offset >= end:
            continue
        for absolute in range(offset // block, (end - 1) // block + 1):
            index, within = divmod(absolute, per_chunk)
            if index != current:
                if blocks:
                    yield current, blocks
                current, blocks = index, []
            if not blocks or blocks[-1] != within:
                blocks.append(within)
    if blocks:
        yield current, blocks


def block_runs(blocks: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted block indexes → (first, count) runs, so adjacent changed blocks are read with one pread."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs
