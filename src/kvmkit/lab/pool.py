"""The lab's file storage pool: XFS with reflink on a sparse loop file, or a plain folder where mounts fail."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from kvmkit.errors import EnvironmentProblem
from kvmkit.lab import procs


class PoolState(BaseModel):
    kind: Literal["xfs", "dir"]
    path: Path
    image: Path | None = None
    loop: str | None = None
    reason: str | None = None  # why the pool is a plain folder, when it is


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def create(root: Path, size_gib: int = 32) -> PoolState:
    path = root / "pool"
    image = root / "pool.xfs"
    path.mkdir(parents=True, exist_ok=True)
    if _mounted(path):
        return PoolState(kind="xfs", path=path, image=image, loop=_loop_of(image))
    if not any(Path("/dev").glob("loop[0-9]*")) and not Path("/dev/loop-control").exists():
        return _plain(path, "no /dev/loop* devices on this host")
    with image.open("wb") as fh:
        fh.truncate(size_gib << 30)
    try:
        procs.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], "mkfs.xfs")
        # direct-io on the loop device: guest I/O with cache=none reaches the backing file, not the page cache twice
        loop = procs.run(["losetup", "--find", "--show", "--direct-io=on", str(image)], "losetup").strip()
    except EnvironmentProblem as exc:
        image.unlink(missing_ok=True)
        return _plain(path, str(exc))
    try:
        procs.run(["mount", "-t", "xfs", loop, str(path)], "mount")
    except EnvironmentProblem as exc:
        procs.run(["losetup", "-d", loop], "losetup -d")
        image.unlink(missing_ok=True)
        return _plain(path, str(exc))
    os.chmod(path, 0o755)
    return PoolState(kind="xfs", path=path, image=image, loop=loop)


def _plain(path: Path, reason: str) -> PoolState:
    return PoolState(kind="dir", path=path, reason=f"XFS reflink pool unavailable ({reason}); using a plain folder")


def _loop_of(image: Path) -> str | None:
    out = procs.run(["losetup", "-j", str(image)], "losetup -j")
    return out.split(":", 1)[0] if out else None


def attached(state: PoolState) -> bool:
    """Is the pool still usable (mounted, for XFS)?"""
    return state.path.is_dir() if state.kind == "dir" else _mounted(state.path)


def destroy(state: PoolState) -> None:
    if state.kind == "xfs" and _mounted(state.path):
        procs.run(["umount", str(state.path)], "umount")
    if state.loop:
        try:
            procs.run(["losetup", "-d", state.loop], "losetup -d")
        except EnvironmentProblem:
            pass  # already detached
    if state.image:
        state.image.unlink(missing_ok=True)
