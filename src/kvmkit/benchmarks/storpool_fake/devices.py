"""The FAKE StorPool API's block devices: loop devices on the reflink pool behind /dev/storpool* links, and the
reflink clones snapshots and reverts are made of. Only for the fake (kvmkit.benchmarks.storpool_fake)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

FICLONE = 0x40049409
BLKFLSBUF = 0x1261


def expose(path: Path, links: tuple[Path, ...], read_only: bool = False) -> str:
    """What a StorPool client host shows for an attached volume or snapshot: a block device and links to it."""
    argv = ["losetup", "--find", "--show", "--direct-io=on", *(["--read-only"] if read_only else []), str(path)]
    loop = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
    for link in links:
        link.unlink(missing_ok=True)
        link.symlink_to(loop)
    return loop


def unexpose(loop: str, links: tuple[Path, ...]) -> None:
    for link in links:
        if link.is_symlink() and os.readlink(link) == loop:
            link.unlink()
    subprocess.run(["losetup", "-d", loop], capture_output=True)


def is_open(loop: str) -> bool:
    """Open by any process (a running VM's QEMU holds its disk open): scanned like fuser does."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == me:
            continue
        try:
            for fd in (proc / "fd").iterdir():
                try:
                    if os.readlink(fd) == loop:
                        return True
                except OSError:
                    continue
        except OSError:
            continue
    return False


def clone(src: Path, dst: Path, require_reflink: bool, in_place: bool = False) -> None:
    """Reflink src into dst (in place keeps dst's inode: a loop device on it stays valid)."""
    flags = os.O_WRONLY | (0 if in_place else os.O_CREAT | os.O_EXCL)
    with src.open("rb") as s:
        fd = os.open(dst, flags, 0o600)
        try:
            try:
                fcntl.ioctl(fd, FICLONE, s.fileno())
            except OSError:
                if require_reflink:
                    raise
                os.ftruncate(fd, 0)
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(s, out)
            os.ftruncate(fd, os.fstat(s.fileno()).st_size)
        finally:
            os.close(fd)


def flush_block_cache(dev: str) -> None:
    """The loop device may cache blocks of the old contents: drop them after a revert (BLKFLSBUF)."""
    fd = os.open(dev, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    finally:
        os.close(fd)


def refresh_size(loop: str) -> None:
    """A loop device picks up its file's new size on `losetup -c` (after a VolumeUpdate resize)."""
    subprocess.run(["losetup", "-c", loop], capture_output=True)
