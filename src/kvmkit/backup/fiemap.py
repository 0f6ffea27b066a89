"""The FIEMAP ioctl edge: a file's extent map (logical offset → physical offset, with flags), read in pages.

Kept apart from the pure comparison in changes.py so that one can be tested exhaustively without a filesystem.
FIEMAP_FLAG_SYNC is set: it flushes dirty pages first, so delayed-allocation ranges (no physical address yet)
do not appear. On a reflink snapshot, which nothing writes, that flush costs nothing.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped extents, extent slots, reserved
EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 reserved
SLOTS = 1024  # extents per ioctl call: 56 KiB of buffer, whatever the file's extent count

LAST = 0x1
UNKNOWN = 0x2  # no physical address known (also set with DELALLOC)
DELALLOC = 0x4
ENCODED = 0x8  # compressed/encoded: the physical range is not the data's bytes
DATA_ENCRYPTED = 0x80
NOT_ALIGNED = 0x100
DATA_INLINE = 0x200  # data lives in metadata (btrfs/ext4 inline): no block of its own to compare
DATA_TAIL = 0x400
UNWRITTEN = 0x800  # allocated, reads as zeros
MERGED = 0x1000
SHARED = 0x2000  # reflinked: informative only, the comparison does not need it
# An extent with any of these flags says nothing reliable about where its bytes live: treat it as changed.
OPAQUE = UNKNOWN | DELALLOC | ENCODED | DATA_ENCRYPTED | NOT_ALIGNED | DATA_INLINE | DATA_TAIL


@dataclass(frozen=True, slots=True)
class MappedExtent:
    logical: int
    physical: int
    length: int
    flags: int


def iter_extent_map(fd: int, size: int | None = None) -> Iterator[MappedExtent]:
    """Every extent of the open file up to `size` (default: its size), in logical order, SLOTS at a time (memory:
    one page of extents whatever the file's fragmentation). Raises OSError (EOPNOTSUPP/ENOTTY) where the
    filesystem has no FIEMAP."""
    end = os.fstat(fd).st_size if size is None else size
    start = 0
    while start < end:
        buf = bytearray(HEADER.pack(start, end - start, FIEMAP_FLAG_SYNC, 0, SLOTS, 0) + bytes(EXTENT.size * SLOTS))
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = HEADER.unpack_from(buf)[3]
        if mapped == 0:
            return
        extent = None
        for i in range(min(mapped, SLOTS)):
            logical, physical, length, _, _, flags, _, _, _ = EXTENT.unpack_from(buf, HEADER.size + i * EXTENT.size)
            extent = MappedExtent(logical, physical, length, flags)
            yield extent
        if extent is None or extent.flags & LAST:
            return
        if extent.logical + extent.length <= start:  # a kernel that made no progress: stop rather than loop
            return
        start = extent.logical + extent.length


def extent_map(fd: int, size: int | None = None) -> list[MappedExtent]:
    return list(iter_extent_map(fd, size))
