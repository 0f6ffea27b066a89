"""Pure chunk arithmetic: which chunks a set of extents touches, and how chains of manifests resolve.

A disk of `size` bytes is cut into fixed chunks of `chunk_size` bytes (the last one may be short). Fixed-size
chunks (not content-defined) because a block device never shifts its content: a write changes bytes in place,
so fixed boundaries find exactly the changed chunks and cost nothing to compute.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from kvmkit.backup.model import BackupManifest, DiskBackup
from kvmkit.errors import InvalidInput

ChunkMap = dict[int, str]  # chunk index → sha256 hex; an absent index is a zero chunk


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_span(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """(offset, length) of chunk `index` of a disk of `size` bytes."""
    offset = index * chunk_size
    if index < 0 or offset >= size:
        raise ValueError(f"chunk {index} is outside a disk of {size} bytes")
    return offset, min(chunk_size, size - offset)


def touched_chunks(extents: Iterable[tuple[int, int]], size: int, chunk_size: int) -> list[int]:
    """Sorted indexes of the chunks that the (offset, length) extents overlap, clipped to the disk."""
    touched: set[int] = set()
    for offset, length in extents:
        end = min(offset + length, size)
        if length <= 0 or offset >= end:
            continue
        touched.update(range(offset // chunk_size, (end - 1) // chunk_size + 1))
    return sorted(touched)


def extents_length(extents: Iterable[tuple[int, int]]) -> int:
    """Total bytes covered by the extents, overlaps counted once."""
    total, reach = 0, -1
    for offset, length in sorted(extents):
        end = offset + length
        if end <= reach:
            continue
        total += end - max(offset, reach)
        reach = end
    return total


def delta(parent: ChunkMap, indexes: Iterable[int], hashes: dict[int, str | None]) -> list[tuple[int, str | None]]:
    """The entries of an incremental record: the examined chunks whose hash differs from the parent's."""
    return [(i, hashes[i]) for i in sorted(indexes) if parent.get(i) != hashes[i]]


def apply(base: ChunkMap, entries: Iterable[tuple[int, str | None]]) -> ChunkMap:
    out = dict(base)
    for index, digest in entries:
        if digest is None:
            out.pop(index, None)
        else:
            out[index] = digest
    return out


def chain(manifest: BackupManifest, by_snapshot: dict[str, BackupManifest]) -> list[BackupManifest]:
    """The manifest and its ancestors, newest first; a missing ancestor is an error (the chain is broken)."""
    out, seen = [manifest], {manifest.snapshot}
    while out[-1].parent is not None:
        parent = by_snapshot.get(out[-1].parent)
        if parent is None:
            raise InvalidInput(f"backup {out[-1].snapshot} of VM {manifest.vm} needs backup {out[-1].parent}, "
                               "which is not on the target")
        if parent.snapshot in seen:
            raise InvalidInput(f"backup {parent.snapshot} of VM {manifest.vm}: its parents form a loop")
        seen.add(parent.snapshot)
        out.append(parent)
    return out


def resolve(target: str, manifests: Sequence[BackupManifest]) -> tuple[DiskBackup, ChunkMap]:
    """The full chunk map of disk `target` as of manifests[0], given its chain (newest first)."""
    records: list[DiskBackup] = []
    for manifest in manifests:
        record = manifest.disk(target)
        if record is None:
            raise InvalidInput(f"backup {manifest.snapshot} of VM {manifest.vm} has no disk {target}")
        records.append(record)
        if record.full:
            break
    else:
        raise InvalidInput(f"disk {target} of backup {manifests[0].snapshot}: no full record in its chain")
    chunk_map: ChunkMap = {}
    for record in reversed(records):
        chunk_map = apply(chunk_map, record.chunks)
    return records[0], chunk_map


def iter_plan(size: int, chunk_size: int, data_extents: Iterable[tuple[int, int]]) -> Iterator[tuple[int, bool]]:
    """(chunk index, has data) for every chunk of the disk: chunks no data extent touches are holes (zeros)."""
    touched = touched_chunks(data_extents, size, chunk_size)
    position = 0
    for index in range(chunk_count(size, chunk_size)):
        has_data = position < len(touched) and touched[position] == index
        if has_data:
            position += 1
        yield index, has_data
