"""Reflink (FICLONE) and the probe that says whether a filesystem has it: the file driver clones with it, and the
overlay barrier asks it which disks need a dirty bitmap instead (no reflink: FIEMAP cannot compare two copies)."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmkit import fsat

FICLONE = 0x40049409
NO_REFLINK = (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS)


@contextmanager
def _new_file_from(src: Path, dst: Path, mode: int = 0o600) -> Iterator[tuple[int, int]]:
    """(src fd, dst fd) for a dst that must not exist yet (O_EXCL: never overwrite); dst is removed on failure."""
    fd_src = os.open(src, os.O_RDONLY)
    try:
        fd_dst = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            yield fd_src, fd_dst
        except BaseException:
            os.close(fd_dst)
            dst.unlink(missing_ok=True)
            raise
        os.close(fd_dst)
    finally:
        os.close(fd_src)


def reflink(src: Path, dst: Path, mode: int = 0o600) -> None:
    """Clone src to a new file dst. Raises OSError; dst is removed on failure."""
    with _new_file_from(src, dst, mode) as (fd_src, fd_dst):
        fcntl.ioctl(fd_dst, FICLONE, fd_src)


_reflink_ok: dict[tuple[int, int, int], bool] = {}  # (st_dev, f_bsize, f_blocks) → answer


def supports_reflink(directory: Path) -> bool:
    """Probe once per filesystem: clone a one-byte file (EOPNOTSUPP on ext4, EXDEV/EINVAL elsewhere).

    A device number alone does not name a filesystem for long: unmount one loop filesystem, mount another, and
    the new one gets the same st_dev (seen in one test session: an ext4 probe's answer reused for an XFS pool).
    The filesystem's fixed geometry (block size, blocks) joins the key, so a new filesystem is probed anew (not
    its inode count: XFS grows and shrinks that with free space, and a full filesystem cannot take the probe)."""
    with fsat.opened_dir(directory) as dir_fd:  # the pool folder is not kvmkit's: act on what was opened
        info = os.fstatvfs(dir_fd)
        dev = (os.fstat(dir_fd).st_dev, info.f_bsize, info.f_blocks)
        if dev not in _reflink_ok:
            _reflink_ok[dev] = _probe(dir_fd)
    return _reflink_ok[dev]


def _probe(dir_fd: int) -> bool:
    """Clone a one-byte file of our own into another of our own, both created O_EXCL|O_NOFOLLOW in the folder's fd:
    a name planted there (a symlink to a host file) makes the probe fail, never write through it."""
    token = f"{os.getpid()}-{secrets.token_hex(6)}"  # not guessable: nobody can plant a name in its way
    names = [f".kvmkit-probe-{token}", f".kvmkit-probe-{token}.clone"]
    fds: list[int] = []
    try:
        fds.append(fsat.create_new(dir_fd, names[0], readable=True))  # FICLONE reads its source
        os.write(fds[0], b"k")
        fds.append(fsat.create_new(dir_fd, names[1]))
        fcntl.ioctl(fds[1], FICLONE, fds[0])
        return True
    except OSError as exc:
        if exc.errno not in NO_REFLINK:
            raise
        return False
    finally:
        for fd in fds:
            os.close(fd)
        for name in names[:len(fds)]:  # only what we created: a planted name stays for the operator to see
            fsat.unlink(dir_fd, name)
