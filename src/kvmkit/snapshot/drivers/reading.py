"""Reading a snapshot a driver made: the shape backup sees, whatever the storage.

A driver's `open_reader(snapshot)` hands back a `SnapshotReader`: the guest-visible size, the extents that hold
data (holes, unallocated RBD extents and unallocated qcow2 clusters are never read) and the bytes. A reader that
can say what changed since an older snapshot of the same disk without reading it declares `TracksChanges`
(RBD: `diff_iterate`; a qcow2 reflink snapshot: its extent and cluster maps), and backup asks
`isinstance(reader, TracksChanges)`: it never branches on a driver's name.

Every reader is made from the snapshot's own record (its handle, and for RBD the cluster it was taken on), never
from a guess about the host, so the same backup code runs on a CloudStack host with cephx keys in libvirt secrets
and on a lab with a ceph.conf.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from kvmkit.errors import NotFound
from kvmkit.snapshot.drivers.guest_view import GuestView
from kvmkit.sparse import data_extents

Extent = tuple[int, int]


@runtime_checkable
class SnapshotReader(Protocol):
    size: int

    def data_extents(self) -> list[Extent]: ...

    def read_into(self, offset: int, buffer: bytearray) -> bytes | bytearray:
        """The len(buffer) bytes at offset: in buffer when the reader can fill one (no allocation per chunk),
        else in a new bytes object; the caller may reuse buffer once it is done with the result."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TracksChanges(Protocol):
    """Optional: the extents that changed since an older snapshot of the same disk, known without reading data."""

    change_method: str  # how it knows, as backup records and prints it ("rbd-diff", "qcow2-map")

    def changed_since(self, older_handle: str) -> list[Extent] | None:
        """Guest extents written or discarded since `older_handle` (a handle this driver made of the same disk);
        None when that snapshot is gone or the answer cannot be trusted (backup then compares hashes)."""
        ...


def pread_into(fd: int, offset: int, buffer: bytearray) -> bytearray:
    """Fill buffer from fd at offset (os.preadv: no intermediate bytes object); past the end of a file that
    shrank the rest reads as zeros, like a hole."""
    view, done = memoryview(buffer), 0
    while done < len(buffer):
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            view[done:] = bytes(len(buffer) - done)
            break
        done += got
    return buffer


def file_identity(fd: int) -> str:
    """Which file this is, and that it was not written since: a snapshot file is compared by extent map with a
    later one only while this stays the same (a re-created file, or a write into it, changes it)."""
    info = os.fstat(fd)
    return f"{info.st_dev}:{info.st_ino}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_size}"


class FileReader:
    """A raw snapshot file, or a block device (a StorPool snapshot attached read-only): file offsets are guest
    offsets. A block device has no st_size and no holes: its size is where it ends, its one extent all of it."""

    def __init__(self, path: Path, on_close: Callable[[], None] | None = None) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"snapshot file {path} does not exist") from None
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self._on_close = on_close

    def data_extents(self) -> list[Extent]:
        if not self.regular:  # a block device answers SEEK_DATA with "no data": every byte of it is read
            return [(0, self.size)] if self.size else []
        return list(data_extents(self.fd, self.size))

    def identity(self) -> str:
        return file_identity(self.fd)

    def prefetch(self, offset: int, length: int) -> None:
        """Ask the kernel to start reading a range now (readahead, asynchronous): many small random reads
        then overlap on the disk instead of queueing behind each worker's one pread."""
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def read_into(self, offset: int, buffer: bytearray) -> bytearray:
        return pread_into(self.fd, offset, buffer)

    def close(self) -> None:
        try:
            os.close(self.fd)
        finally:
            if self._on_close is not None:
                self._on_close()


class GuestViewReader(FileReader):
    """A qcow2 snapshot (and its backing chain) read as the raw disk its guest sees: allocation from QEMU's map
    (unallocated and zero clusters are holes, never read), bytes through QEMU's block layer. Its file offsets
    are not the container's, so backup never compares its extent maps (FIEMAP) as it does a raw file's."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.source, self.fmt = path, fmt
        self.view = GuestView(path, fmt)
        try:
            super().__init__(self.view.path, on_close=self.view.close)
        except BaseException:
            self.view.close()
            raise


def raw_file(reader: SnapshotReader) -> bool:
    """A regular snapshot file read directly, whose extent map (FIEMAP) is the guest's."""
    return isinstance(reader, FileReader) and reader.regular and not isinstance(reader, GuestViewReader)
