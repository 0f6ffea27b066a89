"""`kvmkit backup mount VM SNAPSHOT MOUNTPOINT`: every disk of a backup as a read-only file, through FUSE.

One file per disk (`vda.raw`, …) of the disk's full size; a read fetches, verifies and decodes only the chunks
it touches (a small LRU keeps the last few: memory is bounded by CACHE_CHUNKS, whatever the disk size), holes
and zero chunks read as zeros without touching the target. So `mount -o ro,loop MOUNTPOINT/vda.raw /mnt/x`
pulls one file out of last night's backup without restoring the disk; local and S3 targets alike.

Two processes, so nothing outlives either: the command (supervisor) starts the FUSE server as its child and
waits. The server unmounts when the mount is unmounted, on SIGTERM/SIGINT, and when the supervisor dies (even by
SIGKILL: PR_SET_PDEATHSIG sends it SIGTERM); if the server itself is killed, the supervisor unmounts (lazily, so
a reader holding a file open cannot keep a dead mount around). No file is written anywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmkit.backup import chunking
from kvmkit.backup.codec import ChunkDamaged
from kvmkit.backup.store import ChunkStore
from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, OperationFailed

CACHE_CHUNKS = 8  # decoded chunks kept (8 MiB at the default chunk size)
READY = "kvmkit-mount-ready"
PR_SET_PDEATHSIG = 1


@dataclass
class DiskImage:
    """One backed-up disk as a byte range: which chunk holds which bytes."""

    name: str  # the file name in the mount: "<target>.raw"
    size: int
    chunk_size: int
    chunks: chunking.ChunkMap


class ChunkCache:
    """Decoded, verified chunks by name; at most `capacity` held (least recently used dropped first)."""

    def __init__(self, store: ChunkStore, capacity: int = CACHE_CHUNKS) -> None:
        self.store, self.capacity = store, capacity
        self.held: OrderedDict[str, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, digest: str) -> bytes:
        with self.lock:
            if digest in self.held:
                self.held.move_to_end(digest)
                return self.held[digest]
        raw = self.store.get_chunk(digest)  # outside the lock: readers of other chunks go on
        with self.lock:
            self.held[digest] = raw
            while len(self.held) > self.capacity:
                self.held.popitem(last=False)
        return raw


def read_range(image: DiskImage, cache: ChunkCache, offset: int, size: int) -> bytes:
    """The bytes [offset, offset + size) of the disk, clipped to its end; zero chunks read as zeros."""
    end = min(offset + size, image.size)
    parts: list[bytes] = []
    while offset < end:
        index, within = divmod(offset, image.chunk_size)
        take = min(image.chunk_size - within, end - offset)
        digest = image.chunks.get(index)
        if digest is None:
            parts.append(bytes(take))
        else:
            raw = cache.get(digest)
            if len(raw) < within + take:
                raise ChunkDamaged(digest, f"holds {len(raw)} bytes, chunk {index} of {image.name} needs more")
            parts.append(raw[within: within + take])
        offset += take
    return b"".join(parts)


def images(store: ChunkStore, vm: str, snapshot: str) -> list[DiskImage]:
    from kvmkit.backup.restore import find_backup

    manifest, chain = find_backup(store, vm, snapshot)
    return [DiskImage(name=f"{d.target}.raw", size=d.size_bytes, chunk_size=manifest.chunk_size,
                      chunks=chunking.resolve(d.target, chain)[1]) for d in manifest.disks]


# the FUSE server (child) ----------------------------------------------------------------------------------------
def _operations(disks: list[DiskImage], cache: ChunkCache):
    import pyfuse3
    import trio

    root = pyfuse3.ROOT_INODE
    by_inode = {root + 1 + i: d for i, d in enumerate(disks)}
    by_name = {d.name.encode(): inode for inode, d in by_inode.items()}
    now = time.time_ns()

    def attrs(inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        if inode == root:
            entry.st_mode, entry.st_size, entry.st_nlink = stat.S_IFDIR | 0o555, 0, 2
        elif inode in by_inode:
            entry.st_mode, entry.st_size, entry.st_nlink = stat.S_IFREG | 0o444, by_inode[inode].size, 1
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry.st_ino, entry.st_uid, entry.st_gid = inode, os.getuid(), os.getgid()
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = now
        entry.st_blksize, entry.st_blocks = 1 << 20, 0
        entry.entry_timeout = entry.attr_timeout = 3600
        return entry

    class BackupFs(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            return attrs(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            if parent_inode != root or name not in by_name:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attrs(by_name[name])

        async def opendir(self, inode, ctx):
            if inode != root:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh, start_id, token):
            for inode in sorted(by_inode):
                if inode > start_id and not pyfuse3.readdir_reply(token, by_inode[inode].name.encode(),
                                                                  attrs(inode), inode):
                    return

        async def open(self, inode, flags, ctx):
            if inode not in by_inode:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise pyfuse3.FUSEError(errno.EROFS)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            try:
                return await trio.to_thread.run_sync(read_range, by_inode[fh], cache, off, size)
            except ChunkDamaged:
                raise pyfuse3.FUSEError(errno.EIO) from None

    return BackupFs()


def serve(store: ChunkStore, disks: list[DiskImage], where: MountPoint, ready: Callable[[], None]) -> None:
    """Mount on the folder the supervisor opened and checked (its fd, never its path again), say ready, serve
    until unmounted or signalled; always unmounts what this process mounted."""
    import pyfuse3
    import trio

    options = set(pyfuse3.default_options) | {"ro", f"fsname={FSNAME}", "subtype=kvmkit"}
    pyfuse3.init(_operations(disks, ChunkCache(store)), f"/proc/self/fd/{where.fd}", options)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return
            nursery.start_soon(on_signal)
            ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        where.unmount()  # libfuse would unmount by the /proc path, which names the folder under the mount
        pyfuse3.close(unmount=False)


def _child_main(argv: list[str]) -> None:
    """`python -I -m kvmkit.backup.mount VM SNAPSHOT PARENT_FD MOUNT_FD NAME [TARGET]`: the server, started by
    `mount` with the two folders it opened and checked."""
    from kvmkit import config
    from kvmkit.backup.targets import open_target

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before prctl: do not serve an orphaned mount
        sys.exit(1)
    vm, snapshot, parent_fd, mount_fd, name = argv[:5]
    store = open_target(config.load(), argv[5] if len(argv) > 5 and argv[5] else None)
    disks = images(store, vm, snapshot)

    def ready() -> None:
        print(READY, flush=True)

    serve(store, disks, MountPoint(int(parent_fd), int(mount_fd), name), ready)


# the command (supervisor) ---------------------------------------------------------------------------------------
FSNAME = "kvmkit-backup"
MNT_DETACH = 2  # (no UMOUNT_NOFOLLOW: the path is our own fd's /proc magic link, which must be followed)
# O_PATH: the mount's root is named without asking the filesystem anything (a FUSE server that stopped serving
# would never answer an OPENDIR or a GETATTR); fdinfo and umount2 need no more
ROOT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class MountPoint:
    """The mount point as opened once: its parent folder and itself (O_NOFOLLOW), checked on the fds. Mounting and
    unmounting act on these, so a folder swapped for a symlink after the check cannot redirect either."""

    parent_fd: int
    fd: int
    name: str

    @classmethod
    def open(cls, path: Path) -> MountPoint:
        try:
            parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidInput(f"mount point {path}: cannot open its folder ({exc.strerror})") from None
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError:
            os.close(parent)
            raise InvalidInput(f"mount point {path} is not a folder") from None
        where = cls(parent, fd, path.name)
        try:
            if os.fstat(fd).st_dev != os.fstat(parent).st_dev or _mount_of(fd)[0] != _mount_of(parent)[0]:
                raise Conflict(f"{path} is already a mount point")
            if os.listdir(fd):
                raise InvalidInput(f"mount point {path} is not empty")
        except BaseException:
            where.close()
            raise
        return where

    def mounted(self) -> bool:
        """Is our filesystem mounted on the folder (looked up through the parent fd: it crosses into the mount)?"""
        try:
            root = os.open(self.name, ROOT_FLAGS, dir_fd=self.parent_fd)
        except OSError:
            return False
        try:
            return self._ours(root)
        finally:
            os.close(root)

    def _ours(self, root: int) -> bool:
        """Is the fd the root of a mount over our folder, and that mount kvmkit's?"""
        mnt_id, source = _mount_of(root)
        return mnt_id != _mount_of(self.fd)[0] and source == FSNAME

    def unmount(self) -> None:
        """Detach our filesystem from the folder, if it is ours and still there; by the mount's root fd."""
        try:
            root = os.open(self.name, ROOT_FLAGS, dir_fd=self.parent_fd)
        except OSError:
            return
        try:
            if self._ours(root):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.umount2(f"/proc/self/fd/{root}".encode(), MNT_DETACH)
        finally:
            os.close(root)

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _mount_of(fd: int) -> tuple[int, str]:
    """(mount id, source) of the mount the fd lies in: /proc/self/fdinfo then /proc/self/mountinfo."""
    with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
        mnt_id = next(int(line.split()[1]) for line in fdinfo if line.startswith("mnt_id:"))
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            if int(fields[0]) == mnt_id:
                return mnt_id, fields[fields.index("-") + 2]
    return mnt_id, ""


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def mount(vm: str, snapshot: str, mountpoint: Path, target: str | None,
          on_ready: Callable[[list[str]], None] = lambda _n: None) -> int:
    """Serve the backup at mountpoint until it is unmounted; returns the server's exit status. Checks the
    backup exists first (same errors as restore), so a bad name fails before anything is mounted."""
    from kvmkit import config
    from kvmkit.backup.targets import open_target

    where = MountPoint.open(mountpoint)
    try:
        names = [d.name for d in images(open_target(config.load(), target), vm, snapshot)]
        try:
            import pyfuse3  # noqa: F401
        except ImportError:
            raise EnvironmentProblem("pyfuse3 is not installed (apt-get install python3-pyfuse3)") from None
        if not Path("/dev/fuse").exists():
            raise EnvironmentProblem("/dev/fuse does not exist: this host cannot mount FUSE filesystems")
        return _supervise(vm, snapshot, mountpoint, target, where, names, on_ready)
    finally:
        where.close()


def _supervise(vm: str, snapshot: str, mountpoint: Path, target: str | None, where: MountPoint, names: list[str],
               on_ready: Callable[[list[str]], None]) -> int:
    child = subprocess.Popen([sys.executable, "-I", "-m", "kvmkit.backup.mount", vm, snapshot, str(where.parent_fd),
                              str(where.fd), where.name, target or ""], stdout=subprocess.PIPE, text=True, cwd="/",
                             pass_fds=(where.parent_fd, where.fd))
    try:
        line = child.stdout.readline() if child.stdout else ""
        if line.strip() != READY:
            child.wait()
            raise OperationFailed(f"could not mount backup {snapshot} of VM {vm} at {mountpoint} "
                                  f"(server exited with status {child.returncode})")
        on_ready(names)
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGTERM)
        return child.wait()
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait()
        where.unmount()  # the server was killed before it could unmount: ours only, by fd, lazily


if __name__ == "__main__":
    _child_main(sys.argv[1:])
