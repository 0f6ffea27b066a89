"""Is a restore destination in use, asked of the storage itself, and which Ceph cluster a destination is on.

libvirt knows only this host's domains; a VM on another hypervisor using the same NFS image or RBD image is
invisible to it. So the storage is asked as well:
  files and block devices  QEMU's image locks: QEMU takes open-file-description (OFD) byte locks on its
                           images at offsets 100 + permission bit and 200 + permission bit (block/file-posix.c,
                           raw_apply_lock_bytes); an F_OFD_GETLK probe over those bytes finds them, from any
                           host where the filesystem shares locks (local, NFSv4)
  RBD images               watchers (librbd Image.watchers_list): every client with the image open is one
A destination that is locked or watched is refused; there is no override (a running VM's disk must not be
written under it). The destination cluster of an RBD restore is the VM's own, or the only one with that pool;
never the first one found.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Any

from kvmkit.errors import Conflict, InvalidInput

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on x86_64/aarch64 Linux: type, whence, start, len, pid
LOCK_START, LOCK_LEN = 100, 200  # QEMU's permission bytes (100 + bit) and shared-permission bytes (200 + bit)


def qemu_locked(fd: int) -> bool:
    """Whether any process (here, or on another NFS client) holds a lock on QEMU's lock bytes of this file."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, LOCK_START, LOCK_LEN, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
    except OSError:
        return False  # a filesystem without byte locks: libvirt's own check is all there is
    return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK


def refuse_locked(fd: int, where: str) -> None:
    if qemu_locked(fd):
        raise Conflict(f"{where} is open in a QEMU process (it holds the image's lock, maybe on another host); "
                       "shut that VM down first")


def refuse_watched(image: Any, where: str) -> None:
    """An open rbd.Image: refuse when a client watches it (a running VM, here or on another host)."""
    try:
        watchers = list(image.watchers_list())
    except Exception as exc:  # librbd raises its own classes; unknown means refuse
        raise Conflict(f"RBD image {where}: cannot list its watchers ({exc}); refusing to replace it") from None
    if watchers:
        who = ", ".join(str(w.get("addr", "?")) for w in watchers[:3])
        raise Conflict(f"RBD image {where} is open by {len(watchers)} client(s) ({who}): a running VM uses it; "
                       "shut it down first")


def rbd_location(vm_uuid: str, pool: str, domain_disks: list[Any] | None, key_of: Any) -> dict[str, str] | None:
    """The cluster (as open_writer's location) an RBD restore into `pool` writes to: the VM's own RBD disks'
    cluster when it has some, else the one cluster whose domains use that pool; None (kvmkit's configured
    cluster) when no domain here uses the pool. Several candidates: refused, never guessed."""
    disks = [d for d in domain_disks or [] if d.rbd is not None]
    own = {key_of(d.rbd) for d in disks if d.vm_uuid == vm_uuid}
    candidates = own or {key_of(d.rbd) for d in disks if d.rbd.rbd_pool_image[0] == pool}
    if not candidates:
        return None
    if len(candidates) > 1:
        where = ", ".join(sorted(k.mon_host or k.conf or "default" for k in candidates))
        raise InvalidInput(f"RBD pool {pool!r} is on {len(candidates)} Ceph clusters here ({where}); kvmkit will not "
                           "guess which one to restore into: restore with the VM defined on its own cluster")
    key = candidates.pop()
    return {"conf": key.conf or "", "mon_host": key.mon_host, "client_id": key.client_id,
            "keyring": key.keyring or "", "secret_uuid": key.secret_uuid or ""}
