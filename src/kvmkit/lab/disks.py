"""Lab data disks: ext4-formatted raw files in the pool, or RBD images filled from such a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvmkit.lab import procs
from kvmkit.sparse import data_extents

CHUNK = 4 << 20


def make_file_disk(path: Path, size_mib: int, filesystem: bool = True) -> None:
    """A sparse raw file, ext4-formatted unless filesystem=False (then the guest sees a blank disk)."""
    tmp = path.with_suffix(".new")
    with tmp.open("wb") as fh:
        fh.truncate(size_mib << 20)
    if filesystem:
        procs.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                   "-L", path.stem[:16], str(tmp)], "mkfs.ext4")
    tmp.replace(path)


def make_rbd_disk(conf: Path, pool: str, image: str, size_mib: int) -> None:
    """Create the image and copy an ext4 file system into it, writing only the allocated extents."""
    import rados
    import rbd

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmpdir:
        staging = Path(tmpdir) / "fs.raw"
        make_file_disk(staging, size_mib)
        cluster = rados.Rados(conffile=str(conf))
        cluster.connect(timeout=10)
        try:
            with cluster.open_ioctx(pool) as ioctx:
                rbd.RBD().create(ioctx, image, size_mib << 20, old_format=False)
                with rbd.Image(ioctx, image) as img, staging.open("rb") as fh:
                    fd = fh.fileno()
                    for start, length in data_extents(fd, size_mib << 20):
                        for off in range(start, start + length, CHUNK):
                            img.write(os.pread(fd, min(CHUNK, start + length - off), off), off)
                    img.flush()
        finally:
            cluster.shutdown()


def ensure_rbd_image_snapshot(conf: Path, pool: str, image: str, snap: str, size_mib: int) -> None:
    """A Glance-like base: an ext4 image with a protected snapshot that clones are made from (kept if it exists)."""
    import rados
    import rbd

    cluster = rados.Rados(conffile=str(conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx:
            if image in rbd.RBD().list(ioctx):
                return
    finally:
        cluster.shutdown()
    make_rbd_disk(conf, pool, image, size_mib)
    cluster = rados.Rados(conffile=str(conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image) as img:
            img.create_snap(snap)
            img.protect_snap(snap)
    finally:
        cluster.shutdown()


def clone_rbd_image(conf: Path, parent: tuple[str, str, str], child: tuple[str, str]) -> None:
    """child (pool, image) as a copy-on-write clone of parent (pool, image, snapshot), as Nova boots from Glance."""
    import rados
    import rbd

    cluster = rados.Rados(conffile=str(conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(parent[0]) as p_ioctx, cluster.open_ioctx(child[0]) as c_ioctx:
            rbd.RBD().clone(p_ioctx, parent[1], parent[2], c_ioctx, child[1], features=rbd.RBD_FEATURE_LAYERING)
    finally:
        cluster.shutdown()


def purge_rbd_image(conf: Path, pool: str, image: str) -> None:
    """Remove an image with all its snapshots and group membership (the lab owns every image it made)."""
    import rados
    import rbd

    cluster = rados.Rados(conffile=str(conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, image) as img:
                    group = img.group()
                    if group and group.get("name"):
                        grp = rbd.Group(ioctx, group["name"])
                        for gsnap in list(grp.list_snaps()):
                            grp.remove_snap(gsnap["name"])
                        grp.remove_image(ioctx, image)
                    for snap in list(img.list_snaps()):
                        if img.is_protected_snap(snap["name"]):
                            img.unprotect_snap(snap["name"])
                        img.remove_snap(snap["name"])
                rbd.RBD().remove(ioctx, image)
            except rbd.ImageNotFound:
                pass
    finally:
        cluster.shutdown()


def fragment(path: Path, target_extents: int, block: int = 4096) -> None:
    """Fragment a disk file without changing what it holds: write zero blocks every other block inside its holes.

    Holes read as zeros, so the guest's data and filesystem are untouched, but every write becomes its own extent
    — the state of a long-lived VM disk that makes reflinks slow (LAB-FACTS)."""
    zeros = bytes(block)
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        written = 0
        offset = 0
        while offset < size and written < target_extents:
            try:
                hole = os.lseek(fd, offset, os.SEEK_HOLE)
            except OSError:
                break
            if hole >= size:
                break
            try:
                data = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError:
                data = size
            pos = (hole + block - 1) // block * block + block  # leave a gap after the data before the hole
            while pos + block <= data - block and written < target_extents:
                os.pwrite(fd, zeros, pos)
                written += 1
                pos += 2 * block
            offset = data
        os.fsync(fd)
    finally:
        os.close(fd)
