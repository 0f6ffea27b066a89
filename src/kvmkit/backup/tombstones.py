"""A deleted backup stays deleted: the storage owner cannot put a deleted backup's own (validly sealed) manifest
back and have it accepted as a live backup.

A manifest's seal binds it to its repository, VM and snapshot name, so it cannot be moved or renamed; but a copy
of it taken before a delete or prune is still validly sealed. Each delete therefore leaves a *tombstone* first —
the backup's fingerprint (VM uuid, snapshot, the manifest's `created` time: a backup made again under the same
name has another) — in two places:

* in the repository, `tombstones/<vm_uuid>/<fingerprint>`, so every host sharing it learns of the delete;
* on this host, `<state_dir>/backup-keys/tombstones/<target>/<vm_uuid>` (0600, appended one line at a time),
  so a storage owner who removes the tombstone as well still cannot fool a host that saw it: what a host learns
  from the repository it keeps.

A manifest whose fingerprint has a tombstone is listed as damaged ("a deleted backup put back") and ignored by
list, verify, restore and as a parent. Only repositories with keys get tombstones: without keys the owner can
forge any manifest anyway. This is borg's manifest-timestamp idea (each client remembers what it saw, so a
rolled-back repository is noticed), per backup rather than per repository, since many hosts write one here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kvmkit.errors import EnvironmentProblem

if TYPE_CHECKING:
    from kvmkit.backup.model import BackupManifest


class ChunkStore(Protocol):
    """The two storage primitives tombstones use (store.ChunkStore's): a protocol, since store.py imports this."""

    def _put(self, key: str, data: bytes, durable: bool = True) -> None: ...
    def _list(self, prefix: str) -> Iterator[tuple[str, int]]: ...

log = logging.getLogger(__name__)
PREFIX = "tombstones/"
_FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")
MAX_LOCAL_BYTES = 64 << 20  # 33 bytes a delete: about two million deletes of one VM on one target


def fingerprint(manifest: BackupManifest) -> str:
    text = f"{manifest.vm_uuid}\0{manifest.snapshot}\0{manifest.created.isoformat()}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def key(vm_uuid: str, print_: str) -> str:
    return f"{PREFIX}{vm_uuid}/{print_}"


class Tombstones:
    """One target's tombstones as this host knows them (the repository's, and its own memory)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # this host's memory for this target
        self._seen: dict[str, set[str]] = {}
        self._listed: dict[str, set[str]] | None = None  # every VM's, from one listing (preload)

    def preload(self, store: ChunkStore) -> None:
        """One listing of the whole tombstones/ folder, before a scan of many VMs' manifests (on S3, one LIST
        instead of one per VM)."""
        listed: dict[str, set[str]] = {}
        for name, _size in store._list(PREFIX):
            parts = name.split("/")
            if len(parts) == 3 and _FINGERPRINT.match(parts[2]):
                listed.setdefault(parts[1], set()).add(parts[2])
        self._listed = listed

    def bury(self, store: ChunkStore, manifest: BackupManifest) -> None:
        """Before a manifest is deleted: its tombstone in the repository and in this host's memory."""
        print_ = fingerprint(manifest)
        store._put(key(manifest.vm_uuid, print_), b"", durable=True)
        self._remember(manifest.vm_uuid, [print_])

    def buried(self, store: ChunkStore, manifest: BackupManifest) -> bool:
        return fingerprint(manifest) in self._known(store, manifest.vm_uuid)

    def _known(self, store: ChunkStore, vm_uuid: str) -> set[str]:
        """The VM's tombstones: this host's memory, and the repository's (learnt: added to the memory)."""
        if vm_uuid in self._seen:
            return self._seen[vm_uuid]
        local = self._local(vm_uuid)
        if self._listed is not None:
            remote = self._listed.get(vm_uuid, set())
        else:
            remote = {name.rsplit("/", 1)[-1] for name, _size in store._list(f"{PREFIX}{vm_uuid}/")}
            remote = {p for p in remote if _FINGERPRINT.match(p)}
        if remote - local:
            self._remember(vm_uuid, sorted(remote - local))
        self._seen[vm_uuid] = local | remote
        return self._seen[vm_uuid]

    def _path(self, vm_uuid: str) -> Path:
        return self.folder / vm_uuid

    def _local(self, vm_uuid: str) -> set[str]:
        try:
            fd = os.open(self._path(vm_uuid), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise EnvironmentProblem(f"tombstones {self._path(vm_uuid)}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_size > MAX_LOCAL_BYTES:
                raise EnvironmentProblem(f"tombstones {self._path(vm_uuid)}: not this user's regular file of at "
                                         f"most {MAX_LOCAL_BYTES} bytes")
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
                if len(data) > MAX_LOCAL_BYTES:
                    break
        finally:
            os.close(fd)
        return {line for line in data.decode(errors="replace").split() if _FINGERPRINT.match(line)}

    def _remember(self, vm_uuid: str, prints: list[str]) -> None:
        """Appended, one write per call (O_APPEND: two processes of this host never lose each other's lines)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._path(vm_uuid), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, "".join(f"{p}\n" for p in prints).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if vm_uuid in self._seen:  # else the next _known reads the whole file
            self._seen[vm_uuid].update(prints)
