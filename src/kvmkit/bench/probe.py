"""Facts about a target path on this host: what it is, how big, whether it holds a filesystem or data,
whether it is mounted, whether O_DIRECT works there. Reads only; the decisions live in target.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LOOP_MAJOR = 7


@dataclass(frozen=True)
class TargetProbe:
    """What is at a path, seen from the machine fio runs on. Facts only; target.py decides."""

    path: str
    kind: str  # "missing", "file", "block", "dir", "other"
    parent_exists: bool = True
    size_bytes: int = 0  # file length or device capacity
    free_bytes: int | None = None  # free space of the filesystem holding (or to hold) a file
    filesystem: str | None = None  # type of that filesystem
    mounted_at: str | None = None  # device: where it (a partition, a holder) is mounted; file: loop it backs
    signature: str | None = None  # blkid TYPE of a block device, or "data" when its first MiB is not zero
    owned: bool = False  # created by kvmkit (OWNER_XATTR), or an empty file
    filled_bytes: int = 0  # kvmkit wrote this many bytes of random data over it earlier
    direct_io: bool | None = None  # O_DIRECT open works (False on tmpfs)
    ram_bytes: int = 0  # of the machine whose cache could serve the target
    notes: list[str] = field(default_factory=list)  # facts worth a warning (e.g. a loop device without dio)


def _mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) from /proc/self/mounts; octal escapes (\\040) decoded."""
    entries = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) >= 3:
                decode = lambda s: s.encode().decode("unicode_escape")  # noqa: E731
                entries.append((decode(parts[0]), decode(parts[1]), parts[2]))
    return entries


def _fs_of(path: Path) -> str | None:
    """Type of the filesystem holding `path` (the longest mountpoint prefix)."""
    best, fstype = "", None
    real = str(path.resolve())
    for _, mountpoint, kind in _mounts():
        inside = real == mountpoint or real.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best):
            best, fstype = mountpoint, kind
    return fstype


def _block_mounted(dev: Path) -> str | None:
    """Mountpoint of the device, of one of its partitions, or of a device stacked on it (dm, md, loop)."""
    rdev = dev.stat().st_rdev
    sysdir = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    names = {dev.resolve().name}
    with contextlib.suppress(OSError):
        real = sysdir.resolve()
        names |= {p.name for p in real.iterdir() if (p / "partition").exists()}
        names |= {p.name for p in (real / "holders").iterdir()}
    for source, mountpoint, _ in _mounts():
        if source.startswith("/dev/") and Path(source).resolve().name in names:
            return mountpoint
    with contextlib.suppress(OSError), open("/proc/swaps") as swaps:
        for line in list(swaps)[1:]:
            if Path(line.split()[0]).resolve().name in names:
                return "[swap]"
    return None


def _signature(dev: Path) -> str | None:
    """blkid's TYPE if it knows one, else "data" when the first MiB is not all zeros."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "TYPE", str(dev)], capture_output=True, text=True, timeout=10
        )
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    try:
        with open(dev, "rb") as device:
            head = device.read(1024 * 1024)
    except OSError:
        return "unreadable"
    return "data" if head.count(0) != len(head) else None


def _direct_io_works(path: Path) -> bool:
    """Open with O_DIRECT: tmpfs and some FUSE filesystems refuse it, and then fio would measure RAM."""
    target = path if path.exists() else path.parent
    flags = os.O_RDONLY | os.O_DIRECT
    if target.is_dir():
        # A directory opens with O_DIRECT even on tmpfs; probe with a throw-away file instead.
        probe = target / f".kvmkit-odirect-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
        except OSError as exc:
            return exc.errno != errno.EINVAL
        os.close(fd)
        probe.unlink()
        return True
    try:
        os.close(os.open(target, flags))
    except OSError as exc:
        return exc.errno != errno.EINVAL
    return True


def _loop_notes(st_dev: int) -> list[str]:
    """A file on a loop-mounted filesystem without direct I/O is read through the host page cache."""
    if os.major(st_dev) != LOOP_MAJOR:
        return []
    dio = Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}/loop/dio")
    with contextlib.suppress(OSError):
        if dio.read_text().strip() == "0":
            return [
                "the target's filesystem sits on a loop device without direct I/O: reads can come from the "
                "host page cache (use `losetup --direct-io=on`)"
            ]
    return []


def _loop_backing(path: Path) -> str | None:
    """The loop device this file backs, if any: writing under a mounted loop filesystem corrupts it."""
    real = str(path.resolve())
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == real:
                return f"/dev/{backing.parent.parent.name}"
    return None


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def probe_host(path_text: str, owner_xattr: str) -> TargetProbe:
    path = Path(path_text)
    ram = _ram_bytes()
    try:
        st = path.stat()
    except FileNotFoundError:
        parent = path.parent
        if not parent.is_dir():
            return TargetProbe(path_text, "missing", parent_exists=False, ram_bytes=ram)
        vfs = os.statvfs(parent)
        return TargetProbe(
            path_text,
            "missing",
            free_bytes=vfs.f_bavail * vfs.f_frsize,
            filesystem=_fs_of(parent),
            direct_io=_direct_io_works(path),
            ram_bytes=ram,
            notes=_loop_notes(parent.stat().st_dev),
        )
    if stat.S_ISDIR(st.st_mode):
        return TargetProbe(path_text, "dir", ram_bytes=ram)
    if stat.S_ISBLK(st.st_mode):
        with open(path, "rb") as device:
            size = device.seek(0, os.SEEK_END)
        return TargetProbe(
            path_text,
            "block",
            size_bytes=size,
            mounted_at=_block_mounted(path),
            signature=_signature(path),
            direct_io=_direct_io_works(path),
            ram_bytes=ram,
        )
    if not stat.S_ISREG(st.st_mode):
        return TargetProbe(path_text, "other", ram_bytes=ram)
    mark = _xattr(path, owner_xattr)
    filled = int(mark) if mark and mark.isdigit() else 0
    vfs = os.statvfs(path)
    return TargetProbe(
        path_text,
        "file",
        size_bytes=st.st_size,
        free_bytes=vfs.f_bavail * vfs.f_frsize,
        filesystem=_fs_of(path),
        mounted_at=_loop_backing(path),
        owned=mark is not None or st.st_size == 0,
        filled_bytes=filled,
        direct_io=_direct_io_works(path),
        ram_bytes=ram,
        notes=_loop_notes(st.st_dev),
    )
