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

import itertools
from collections.abc import Iterable, Iterator, Sequence

from kvmkit.backup.fiemap import OPAQUE, UNWRITTEN, MappedExtent
from kvmkit.backup.model import ChangeMethod

__all__ = ["ChangeMethod", "block_runs", "changed_ranges", "chunk_blocks", "normalize"]

Extent = tuple[int, int]  # (offset, length)
ZERO, DATA, UNKNOWN = 0, 1, 2
Segment = tuple[int, int, int, int]  # start, end, class, physical address at start (DATA only)


def normalize(extents: Iterable[MappedExtent], size: int) -> list[Segment]:
    """Sorted, non-overlapping, clipped to [0, size); overlapping extents (a confused filesystem) become one
    UNKNOWN segment, so they are reported changed."""
    out: list[Segment] = []
    for ext in sorted(extents, key=lambda e: e.logical):
        start, end = max(0, ext.logical), min(size, ext.logical + ext.length)
        if ext.length <= 0 or start >= end:
            continue
        if ext.flags & OPAQUE:
            kind = UNKNOWN
        elif ext.flags & UNWRITTEN:
            kind = ZERO
        else:
            kind = DATA
        physical = ext.physical + (start - ext.logical)
        if out and start < out[-1][1]:
            prev = out.pop()
            start, end, kind, physical = prev[0], max(end, prev[1]), UNKNOWN, 0
        out.append((start, end, kind, physical))
    return out


def _class_at(segments: list[Segment], index: int, offset: int) -> tuple[int, int, int]:
    """(position, class, physical at offset) where position tracks the first segment ending after offset."""
    while index < len(segments) and segments[index][1] <= offset:
        index += 1
    if index < len(segments) and segments[index][0] <= offset:
        start, _end, kind, physical = segments[index]
        return index, kind, physical + (offset - start) if kind == DATA else 0
    return index, ZERO, 0  # a hole


def changed_ranges(old: Iterable[MappedExtent], new: Iterable[MappedExtent], old_size: int,
                   new_size: int) -> list[Extent]:
    """Byte ranges (sorted, merged) where the new snapshot may differ from the old one."""
    common = min(old_size, new_size)
    a, b = normalize(old, common), normalize(new, common)
    cuts = sorted({0, common, *(s[0] for s in a), *(s[1] for s in a), *(s[0] for s in b), *(s[1] for s in b)})
    out: list[Extent] = []
    ia = ib = 0
    for lo, hi in itertools.pairwise(cuts):
        if lo >= common:
            break
        ia, kind_a, phys_a = _class_at(a, ia, lo)
        ib, kind_b, phys_b = _class_at(b, ib, lo)
        same = (kind_a == kind_b == ZERO) or (kind_a == kind_b == DATA and phys_a == phys_b)
        if not same:
            _add(out, lo, hi)
    if old_size != new_size:
        _add(out, common, max(old_size, new_size))
    return out


def _add(out: list[Extent], start: int, end: int) -> None:
    if out and out[-1][0] + out[-1][1] == start:
        out[-1] = (out[-1][0], end - out[-1][0])
    else:
        out.append((start, end - start))


def chunk_blocks(ranges: Sequence[Extent], size: int, chunk_size: int, block: int) -> Iterator[tuple[int, list[int]]]:
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
