"""Reading snapshots and writing restored disks: reflink files and RBD snapshots, behind one small shape.

Readers say which extents hold data (holes and unallocated RBD extents are never read) and, for RBD, which
extents changed since an older snapshot (`diff_iterate`). RbdWriter builds a restored image beside its destination
and only `commit`s (renames) once every chunk was verified; files are staged by restore_targets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvmkit import config
from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, NotFound, OperationFailed
from kvmkit.sparse import data_extents

Extent = tuple[int, int]


class SnapshotReader(Protocol):
    size: int

    def data_extents(self) -> list[Extent]: ...

    def read_into(self, offset: int, buffer: bytearray) -> bytes | bytearray:
        """The len(buffer) bytes at offset: in buffer when the reader can fill one (no allocation per chunk),
        else in a new bytes object; the caller may reuse buffer once it is done with the result."""
        ...

    def close(self) -> None: ...


def file_data_extents(fd: int, size: int) -> list[Extent]:
    """Allocated regions of a (sparse) file: holes read as zeros and are skipped."""
    return list(data_extents(fd, size))


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
    def __init__(self, path: Path) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"snapshot file {path} does not exist") from None
        self.size = os.fstat(self.fd).st_size

    def data_extents(self) -> list[Extent]:
        return file_data_extents(self.fd, self.size)

    def identity(self) -> str:
        return file_identity(self.fd)

    def prefetch(self, offset: int, length: int) -> None:
        """Ask the kernel to start reading a range now (readahead, asynchronous): many small random reads
        then overlap on the disk instead of queueing behind each worker's one pread."""
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def read_into(self, offset: int, buffer: bytearray) -> bytearray:
        return pread_into(self.fd, offset, buffer)

    def close(self) -> None:
        os.close(self.fd)


# RBD -----------------------------------------------------------------------------------------------------------
def ceph_conf(settings: config.Settings) -> Path:
    """The cluster's ceph.conf: from settings, else the lab's (so the lab works with no configuration)."""
    if settings.ceph.conf is not None:
        return settings.ceph.conf
    from kvmkit.lab.state import load

    state = load(settings.lab_path)
    if state is not None and state.ceph is not None:
        return state.ceph.conf
    raise EnvironmentProblem("no Ceph configuration: set [ceph] conf = \"/etc/ceph/ceph.conf\" in the config")


@dataclass
class Ceph:
    cluster: Any

    @classmethod
    def connect(cls, settings: config.Settings) -> Ceph:
        try:
            import rados
        except ImportError:
            raise EnvironmentProblem("python3-rados is not installed (apt-get install python3-rbd)") from None
        conf = ceph_conf(settings)
        options = {"keyring": str(settings.ceph.keyring)} if settings.ceph.keyring else {}
        cluster = rados.Rados(conffile=str(conf), rados_id=settings.ceph.client_id, conf=options)
        try:
            cluster.connect(timeout=15)
        except rados.Error as exc:
            raise EnvironmentProblem(f"cannot reach Ceph with {conf}: {exc}") from None
        return cls(cluster)

    def close(self) -> None:
        self.cluster.shutdown()


@contextmanager
def ceph_session(settings: config.Settings) -> Iterator[Ceph]:
    ceph = Ceph.connect(settings)
    try:
        yield ceph
    finally:
        ceph.close()


def split_handle(handle: str) -> tuple[str, str, str | None]:
    """"pool/image@snap" → (pool, image, snap); "pool/image" → (pool, image, None)."""
    spec, _, snap = handle.partition("@")
    pool, _, image = spec.partition("/")
    if not pool or not image:
        raise InvalidInput(f"RBD handle {handle!r} is not pool/image[@snap]")
    return pool, image, snap or None


class RbdReader:
    def __init__(self, ceph: Ceph, handle: str) -> None:
        import rbd

        pool, image, snap = split_handle(handle)
        if snap is None:
            raise InvalidInput(f"RBD handle {handle!r} names no snapshot")
        self.handle, self.snap = handle, snap
        try:
            self.ioctx = ceph.cluster.open_ioctx(pool)
            self.image = rbd.Image(self.ioctx, image, snapshot=snap, read_only=True)
        except (rbd.ImageNotFound, rbd.ObjectNotFound):
            raise NotFound(f"RBD snapshot {handle} does not exist") from None
        self.size = self.image.size()

    def has_snapshot(self, snap: str) -> bool:
        return any(s["name"] == snap for s in self.image.list_snaps())

    def _diff(self, from_snapshot: str | None, want_deleted: bool) -> list[Extent]:
        extents: list[Extent] = []

        def collect(offset: int, length: int, exists: bool) -> int:
            if exists or want_deleted:
                extents.append((offset, length))
            return 0
        self.image.diff_iterate(0, self.size, from_snapshot, collect)
        return extents

    def data_extents(self) -> list[Extent]:
        return self._diff(None, want_deleted=False)

    def changed_extents(self, since_snapshot: str) -> list[Extent]:
        """Extents written or discarded since `since_snapshot` (both change the chunk)."""
        return self._diff(since_snapshot, want_deleted=True)

    def read_into(self, offset: int, buffer: bytearray) -> bytes:
        return self.image.read(offset, len(buffer))  # librbd hands back its own bytes; no copy into buffer

    def close(self) -> None:
        self.image.close()
        self.ioctx.close()


class RbdWriter:
    """Builds `<image>.kvmkit-restore`, then renames it to the image; a replaced image is kept, renamed aside."""

    def __init__(self, ceph: Ceph, dest: str, size: int, replace: bool) -> None:
        import rbd

        pool, image, snap = split_handle(dest)
        if snap is not None:
            raise InvalidInput(f"restore destination {dest!r} must be pool/image, not a snapshot")
        self.rbd, self.pool, self.image_name = rbd.RBD(), pool, image
        try:
            self.ioctx = ceph.cluster.open_ioctx(pool)
        except Exception as exc:
            raise NotFound(f"RBD pool {pool}: {exc}") from None
        self.exists = image in self.rbd.list(self.ioctx)
        if self.exists and not replace:
            self.ioctx.close()
            raise Conflict(f"RBD image {dest} exists; pass --force to replace it (it is kept, renamed), "
                           "or --to another image")
        self.tmp = f"{image}.kvmkit-restore"
        if self.tmp in self.rbd.list(self.ioctx):
            self.rbd.remove(self.ioctx, self.tmp)  # ours by name: left by an interrupted restore
        self.rbd.create(self.ioctx, self.tmp, size, old_format=False)
        self.image = rbd.Image(self.ioctx, self.tmp)

    def write(self, offset: int, data: bytes) -> None:
        self.image.write(data, offset)

    def commit(self) -> str:
        self.image.flush()
        self.image.close()
        if self.exists:
            aside = f"{self.image_name}.kvmkit-replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            self.rbd.rename(self.ioctx, self.image_name, aside)
        self.rbd.rename(self.ioctx, self.tmp, self.image_name)
        self.ioctx.close()
        return f"{self.pool}/{self.image_name}"

    def abort(self) -> None:
        try:
            self.image.close()
            self.rbd.remove(self.ioctx, self.tmp)
        except Exception as exc:  # best effort: the name says what it is and the next restore removes it
            raise OperationFailed(f"could not remove partial image {self.pool}/{self.tmp}: {exc}") from None
        finally:
            self.ioctx.close()
