"""Reading an RBD snapshot and writing a restored image, on an ioctx the RBD driver opened from the disk's own
record (its monitors, user and libvirt secret): no ceph.conf or keyring of kvmkit's is needed.

The reader says which extents hold data and which changed since an older snapshot (`diff_iterate`, both
metadata-only). The writer builds `<image>.kvmkit-restore` beside its destination and only `commit`s (renames)
once every chunk was verified; a replaced image is kept, renamed aside.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from kvmkit.errors import Conflict, InvalidInput, NotFound, OperationFailed
from kvmkit.snapshot.drivers.reading import Extent

RESTORE_SUFFIX = ".kvmkit-restore"


def split_handle(handle: str) -> tuple[str, str, str | None]:
    """"pool/image@snap" → (pool, image, snap); "pool/image" → (pool, image, None)."""
    spec, _, snap = handle.partition("@")
    pool, _, image = spec.partition("/")
    if not pool or not image:
        raise InvalidInput(f"RBD handle {handle!r} is not pool/image[@snap]")
    return pool, image, snap or None


class RbdReader:
    change_method = "rbd-diff"

    def __init__(self, rbd: ModuleType, ioctx: Any, handle: str) -> None:
        """Takes ownership of ioctx (closed with the reader)."""
        pool, image, snap = split_handle(handle)
        if snap is None:
            ioctx.close()
            raise InvalidInput(f"RBD handle {handle!r} names no snapshot")
        self.pool, self.image_name, self.snap, self.handle = pool, image, snap, handle
        self.ioctx = ioctx
        try:
            self.image = rbd.Image(ioctx, image, snapshot=snap, read_only=True)
        except (rbd.ImageNotFound, rbd.ObjectNotFound):
            ioctx.close()
            raise NotFound(f"RBD snapshot {handle} does not exist") from None
        except BaseException:
            ioctx.close()
            raise
        self.size = self.image.size()

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

    def changed_since(self, older_handle: str) -> list[Extent] | None:
        """Extents written or discarded since the older snapshot (both change the chunk), when it is a snapshot
        of this very image that still exists (a revert by clone makes a new image: then None)."""
        try:
            pool, image, snap = split_handle(older_handle)
        except InvalidInput:
            return None
        if (pool, image) != (self.pool, self.image_name) or snap is None:
            return None
        if not any(s["name"] == snap for s in self.image.list_snaps()):
            return None
        return self._diff(snap, want_deleted=True)

    def read_into(self, offset: int, buffer: bytearray) -> bytes:
        return self.image.read(offset, len(buffer))  # librbd hands back its own bytes; no copy into buffer

    def close(self) -> None:
        try:
            self.image.close()
        finally:
            self.ioctx.close()


class RbdWriter:
    """Builds `<image>.kvmkit-restore`, then renames it to the image; a replaced image is kept, renamed aside."""

    def __init__(self, rbd: ModuleType, ioctx: Any, dest: str, size: int, replace: bool) -> None:
        """Takes ownership of ioctx (closed by commit or abort)."""
        pool, image, snap = split_handle(dest)
        if snap is not None:
            ioctx.close()
            raise InvalidInput(f"restore destination {dest!r} must be pool/image, not a snapshot")
        self.rbd, self.pool, self.image_name, self.ioctx = rbd.RBD(), pool, image, ioctx
        self._rbd_module = rbd
        try:
            names = self.rbd.list(ioctx)
            self.exists = image in names
            if self.exists and not replace:
                raise Conflict(f"RBD image {dest} exists; pass --force to replace it (it is kept, renamed), "
                               "or --to another image")
            if self.exists:
                self._refuse_watched(rbd)
            self.tmp = image + RESTORE_SUFFIX
            if self.tmp in names:
                self.rbd.remove(ioctx, self.tmp)  # ours by name: left by an interrupted restore
            self.rbd.create(ioctx, self.tmp, size, old_format=False)
            self.image = rbd.Image(ioctx, self.tmp)
        except BaseException:
            ioctx.close()
            raise

    def _refuse_watched(self, rbd: ModuleType) -> None:
        """An image a client has open (a running VM, on any host) is never renamed away under it."""
        from kvmkit.backup.restore_guard import refuse_watched

        with rbd.Image(self.ioctx, self.image_name, read_only=True) as image:
            refuse_watched(image, f"{self.pool}/{self.image_name}")

    def commit(self) -> str:
        self.image.flush()
        self.image.close()
        if self.exists:
            self._refuse_watched(self._rbd_module)  # again: a VM may have started on another host meanwhile
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
            raise OperationFailed(f"could not remove partial image {self.pool}/{self.tmp}: {exc}") from exc
        finally:
            self.ioctx.close()
