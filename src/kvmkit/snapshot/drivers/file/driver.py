"""File driver: raw/qcow2 disk files on a reflink filesystem (XFS, btrfs, NFS 4.2 with clone).

A snapshot is a FICLONE of the disk file beside it, `<disk>@<name>.kvmkit`: metadata-only, no data copied. On a
filesystem without reflink the driver refuses (a full copy inside a freeze would hold the guest frozen for
minutes); `--allow-full-copy` takes the overlay path of the engine instead.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from kvmkit import fsat
from kvmkit.errors import Conflict, EnvironmentProblem, NotFound, OperationFailed
from kvmkit.snapshot.drivers.base import BarrierMode, PlanOptions, RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.file import bitmaps, overlay
from kvmkit.snapshot.drivers.file.reflink import (  # noqa: F401 (FICLONE, NO_REFLINK: named here as before)
    FICLONE,
    NO_REFLINK,
    _new_file_from,
    reflink,
    supports_reflink,
)
from kvmkit.snapshot.drivers.guest_view import guest_size
from kvmkit.snapshot.drivers.reading import FileReader, GuestViewReader, SnapshotReader
from kvmkit.snapshot.journal import FileStaging
from kvmkit.snapshot.model import DiskSnapshot, Method
from kvmkit.sparse import data_extents
from kvmkit.virt.connection import Connection, Domain, live_disks
from kvmkit.virt.disks import Disk

SUPPORTED_FORMATS = ("raw", "qcow2")
SUFFIX = ".kvmkit"
OWNER_XATTR = "user.kvmkit.catalog"  # the id of the catalog that made a snapshot file
log = logging.getLogger(__name__)


def sparse_copy(src: Path, dst: Path, chunk: int = 64 << 20) -> None:
    """Copy only the allocated extents, in bounded chunks; holes stay holes."""
    size = src.stat().st_size
    with _new_file_from(src, dst) as (fd_src, fd_dst):
        for start, length in data_extents(fd_src, size):
            pos, end = start, start + length
            while pos < end:
                n = os.copy_file_range(fd_src, fd_dst, min(chunk, end - pos), pos, pos)
                if n == 0:
                    break
                pos += n
        os.ftruncate(fd_dst, size)
        os.fsync(fd_dst)


class FileDriver:
    name = "file"

    def __init__(self, libvirt_uri: str = "qemu:///system") -> None:
        self.libvirt_uri = libvirt_uri  # where the dirty bitmaps of disks without reflink are read and removed

    def claims(self, disk: Disk) -> bool:
        # raw and qcow2 (with any backing chain) are what clouds use and what kvmkit has verified; a vmdk or a
        # luks container is left unclaimed, so it is one line ("no kvmkit storage driver serves it"), not a guess
        return disk.kind == "file" and disk.format in SUPPORTED_FORMATS

    def handle_for(self, disk: Disk, tag: str) -> Path:
        return Path(f"{disk.source}@{tag}{SUFFIX}")

    def plan(self, disk: Disk, tag: str, options: PlanOptions | None = None) -> DiskSnapshot:
        options = options or PlanOptions()
        source = Path(disk.source)
        if not source.exists():
            raise NotFound(f"disk {disk.target}: {source} does not exist")
        reflink_ok = supports_reflink(source.parent)
        if not reflink_ok and not options.allow_full_copy:
            raise EnvironmentProblem(
                f"disk {disk.target}: the filesystem of {source.parent} cannot reflink (FICLONE unsupported), so a "
                "snapshot would be a full copy; use XFS (mkfs.xfs -m reflink=1), btrfs or NFS 4.2, "
                "or pass --allow-full-copy"
            )
        handle = self.handle_for(disk, tag)
        for taken in (handle, overlay.overlay_path(disk.source, tag)):
            if taken.exists():
                raise Conflict(f"disk {disk.target}: {taken} already exists; kvmkit will not overwrite it")
        extents = overlay.extent_count(source, options.extent_limit) if reflink_ok else None
        direct = reflink_ok and extents is not None and extents <= options.extent_limit
        return DiskSnapshot(target=disk.target, driver=self.name, source=disk.source, handle=str(handle),
                            format=disk.format, size_bytes=guest_size(source, disk.format),
                            method=Method.DIRECT if direct else Method.BARRIER, extents=extents, owner=options.owner,
                            location={} if reflink_ok else bitmaps.location_for(tag, options.vm_uuid))

    def snapshot(self, planned: DiskSnapshot) -> DiskSnapshot:
        """Reflink the disk; on a filesystem without reflink (only ever outside the freeze) copy it sparsely."""
        try:
            if supports_reflink(Path(planned.source).parent):
                reflink(Path(planned.source), Path(planned.handle))
            else:
                sparse_copy(Path(planned.source), Path(planned.handle))
        except OSError as exc:
            raise OperationFailed(
                f"disk {planned.target}: reflink to {planned.handle} failed: {exc.strerror}") from exc
        if planned.owner:
            self.set_owner(planned, planned.owner)
        return planned

    def exists(self, snap: DiskSnapshot) -> bool:
        return Path(snap.handle).exists()

    def delete(self, snap: DiskSnapshot) -> None:
        if not (snap.handle.startswith(f"{snap.source}@") and snap.handle.endswith(SUFFIX)):
            raise Conflict(f"{snap.handle} is not a kvmkit snapshot; kvmkit deletes only its own")
        Path(snap.handle).unlink(missing_ok=True)
        if snap.location.get(bitmaps.LOCATION_KEY):
            bitmaps.delete_bitmap(snap, self.libvirt_uri)

    def owned(self, disk: Disk) -> list[str]:
        return sorted(glob.glob(f"{glob.escape(disk.source)}@*{SUFFIX}"))

    # Ownership: an extended attribute on the snapshot file (XFS, btrfs, ext4 and NFS 4.2 keep user xattrs)
    def owner_of(self, snap: DiskSnapshot) -> str | None:
        try:
            return os.getxattr(snap.handle, OWNER_XATTR, follow_symlinks=False).decode(errors="replace")
        except OSError:  # ENODATA: not marked; ENOENT: gone; ENOTSUP: a filesystem without user xattrs
            return None

    def set_owner(self, snap: DiskSnapshot, owner: str) -> None:
        try:
            os.setxattr(snap.handle, OWNER_XATTR, owner.encode(), follow_symlinks=False)
        except OSError as exc:  # the snapshot stands; unmarked, recover only ever reports it
            log.warning("disk %s: cannot mark %s with its catalog (%s)", snap.target, snap.handle, exc.strerror)

    def tag_of(self, handle: str) -> str | None:
        _, at, name = handle.rpartition("@")
        return name.removesuffix(SUFFIX) if at and name.endswith(SUFFIX) else None

    # BarrierSnapshots: the O(1) overlay barrier (overlay.py) for disks planned Method.BARRIER
    def prepare_barrier(self, dom: Domain, disks: Sequence[Disk], tag: str,
                        mode: BarrierMode) -> Callable[[], None]:
        disks = list(disks)
        if mode == "qmp":
            tops = overlay.qmp_prepare(dom, disks, tag)
            return lambda: overlay.qmp_barrier(dom, tops)
        targets = [disk.target for disk in live_disks(dom)]
        overlay.prepare(disks, tag)
        return lambda: overlay.barrier(dom, disks, targets, tag)

    def finish_barrier(self, conn: Connection, dom: Domain | None, disks: Sequence[Disk], tag: str,
                       mode: BarrierMode) -> str:
        return overlay.finish(conn, dom, list(disks), tag, mode)

    def release(self) -> None:
        """Nothing is held open between plan and snapshot."""

    def close(self) -> None:
        """No connections."""

    def open_reader(self, snap: DiskSnapshot) -> SnapshotReader:
        """A raw snapshot is read as it is; a qcow2 one through QEMU's block layer with its whole backing chain,
        as its guest sees it (the format is the one the domain XML gave at snapshot time, never probed). A snapshot
        with a dirty bitmap (a filesystem without reflink) gets a reader that lists what changed since an older one
        from the running QEMU (TracksChanges, bitmaps.py)."""
        if snap.location.get(bitmaps.LOCATION_KEY):
            reader: SnapshotReader = (BitmapFileReader(Path(snap.handle)) if snap.format == "raw"
                                      else BitmapGuestViewReader(Path(snap.handle), snap.format))
            reader.snap, reader.libvirt_uri = snap, self.libvirt_uri  # type: ignore[attr-defined]
            return reader
        if snap.format == "raw":
            return FileReader(Path(snap.handle))
        return GuestViewReader(Path(snap.handle), snap.format)

    # revert: clone the snapshot to <disk>.kvmkit-new, hard-link the disk to <disk>.kvmkit-old, rename new → disk.
    def stage_revert(self, disk: Disk, snap: DiskSnapshot, options: RevertOptions) -> StagedRevert:
        source, handle = Path(disk.source), Path(snap.handle)
        if not handle.exists():
            raise NotFound(f"disk {disk.target}: snapshot file {handle} is missing")
        new, old = Path(f"{source}.kvmkit-new"), Path(f"{source}.kvmkit-old")
        try:
            _stage_clone(source, handle, new.name)
        except OSError as exc:
            raise OperationFailed(f"disk {disk.target}: cannot clone {handle}: {exc.strerror or exc}") from exc
        return StagedRevert(disk.target, self.name, FileStaging(source=str(source), new=str(new), old=str(old)))

    def swap(self, staged: StagedRevert) -> None:
        data = _file_staging(staged)
        source, new, old = Path(data.source), Path(data.new), Path(data.old)
        with fsat.opened_dir(source.parent) as d:  # names of one folder, resolved once (linkat/renameat, no follow)
            if fsat.lstat(d, old.name) is None:
                os.link(source.name, old.name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=False)
            os.rename(new.name, source.name, src_dir_fd=d, dst_dir_fd=d)  # atomic: the disk always a whole image

    def undo(self, staged: StagedRevert) -> None:
        data = _file_staging(staged)
        source, new, old = Path(data.source), Path(data.new), Path(data.old)
        with fsat.opened_dir(source.parent) as d:
            if fsat.lstat(d, old.name) is not None:
                os.rename(old.name, source.name, src_dir_fd=d, dst_dir_fd=d)
            fsat.unlink(d, new.name)

    def commit(self, staged: StagedRevert) -> None:
        data = _file_staging(staged)
        with fsat.opened_dir(Path(data.source).parent) as d:
            fsat.unlink(d, Path(data.old).name)
            fsat.unlink(d, Path(data.new).name)


class BitmapFileReader(bitmaps.DirtyBitmapChanges, FileReader):
    """A raw snapshot file whose changes since the previous snapshot QEMU's dirty bitmap knows."""


class BitmapGuestViewReader(bitmaps.DirtyBitmapChanges, GuestViewReader):
    """A qcow2 snapshot whose changes since the previous snapshot QEMU's (persistent) dirty bitmap knows."""


def _stage_clone(source: Path, handle: Path, new_name: str) -> None:
    """Clone the snapshot into `new_name` beside the disk, with the disk's owner and mode, all on fds of the disk's
    folder opened once: a pool on a shared export may be written by others, and a link planted at either name must
    not make root clone into, chown or chmod a host file."""
    with fsat.opened_dir(source.parent) as dir_fd:
        fsat.unlink(dir_fd, new_name)  # ours by name: a leftover of an interrupted revert (a link: removed)
        disk_st = fsat.lstat(dir_fd, source.name)
        if disk_st is None or not stat.S_ISREG(disk_st.st_mode):
            raise OSError(0, f"{source} is not a regular file")
        with fsat.opened_dir(handle.parent) as snap_dir:
            src_fd = fsat.open_regular(snap_dir, handle.name)
        try:
            dst_fd = fsat.create_new(dir_fd, new_name)
            try:
                fcntl.ioctl(dst_fd, FICLONE, src_fd)
                fsat.copy_owner_and_mode(dst_fd, disk_st)
            except BaseException:
                os.close(dst_fd)
                fsat.unlink(dir_fd, new_name)
                raise
            os.close(dst_fd)
        finally:
            os.close(src_fd)


def _file_staging(staged: StagedRevert) -> FileStaging:
    if not isinstance(staged.data, FileStaging):
        raise OperationFailed(f"disk {staged.target}: revert data of kind {staged.data.kind!r} is not the file "
                              "driver's")
    data = staged.data
    if (data.new, data.old) != (f"{data.source}.kvmkit-new", f"{data.source}.kvmkit-old"):  # a journal read back
        raise OperationFailed(f"disk {staged.target}: revert journal names {data.new} and {data.old}, not the "
                              f"staging names of {data.source}: refused")
    return data
