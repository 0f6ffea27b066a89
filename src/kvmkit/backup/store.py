"""A directory target (a local folder, or a mounted NFS export): content-addressed chunks and JSON manifests.

Layout (everything 0600, folders 0700):
    <root>/kvmkit-backup.json          format marker
    <root>/chunks/ab/<sha256>          see codec.py (raw or zlib frames; named by the sha256 of the raw bytes)
    <root>/manifests/<vm_uuid>/<snapshot>.json
    <root>/incomplete/<vm_uuid>--<snapshot>.json   intent of a backup in progress (informational)
    <root>/lock                        flock: backups share it, garbage collection takes it alone

Every file appears by rename() after fsync, so a reader never sees half a chunk or half a manifest; a backup is
good exactly when its manifest exists. Chunks a killed backup left behind are reused by the retried run (its
writes skip chunks already present) or removed by the next garbage collection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from kvmkit.backup import codec
from kvmkit.backup.codec import ChunkDamaged
from kvmkit.backup.model import FORMAT_VERSION, BackupManifest
from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound, OperationFailed

log = logging.getLogger(__name__)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if ctypes.util.find_library("c") else None


class DirTarget:
    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, root
        if not root.is_dir():
            raise NotFound(f"backup target {name}: {root} is not a folder (is the export mounted?)")
        self._made_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        marker = root / "kvmkit-backup.json"
        if marker.exists():
            try:
                version = json.loads(marker.read_text()).get("format")
            except (OSError, ValueError) as exc:
                raise OperationFailed(f"backup target {name}: {marker} is unreadable: {exc}") from None
            if version != FORMAT_VERSION:
                raise InvalidInput(f"backup target {name}: format {version}, this kvmkit reads {FORMAT_VERSION}")
        else:
            self._atomic_write(marker, json.dumps({"format": FORMAT_VERSION, "tool": "kvmkit"}).encode())

    # paths ------------------------------------------------------------------------------------------------
    def chunk_path(self, digest: str) -> Path:
        return self.root / "chunks" / digest[:2] / digest

    def manifest_path(self, vm_uuid: str, snapshot: str) -> Path:
        return self.root / "manifests" / vm_uuid / f"{snapshot}.json"

    def _dir(self, path: Path) -> Path:
        if path not in self._made_dirs:
            with self._dirs_lock:
                missing = [p for p in (path, *path.parents) if not p.exists()]
                for folder in reversed(missing):  # mkdir(parents=True) would give the parents umask modes
                    folder.mkdir(mode=0o700, exist_ok=True)
                self._made_dirs.add(path)
        return path

    def _atomic_write(self, path: Path, data: bytes, durable: bool = True) -> None:
        """Write beside, (fsync,) rename: the name appears only with its whole content. Chunks skip the fsync
        (durable=False): one syncfs of the target before the manifest is written makes them all durable at once."""
        folder = self._dir(path.parent)
        tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OperationFailed(f"backup target {self.name} is full ({exc.strerror}) writing {path.name}; "
                                      "the backup is not recorded, a rerun after freeing space resumes it") from None
            raise OperationFailed(f"backup target {self.name}: writing {path}: {exc.strerror}") from None

    def sync(self) -> None:
        """Make every chunk written so far durable (syncfs of the target's filesystem, else fsync per folder),
        so a power cut cannot leave a manifest naming chunks that never reached the disk."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _LIBC is not None and _LIBC.syncfs(fd) == 0:
                return
            os.sync()
        finally:
            os.close(fd)

    def sync_dirs(self) -> None:
        """fsync the folders that got new names, so a power cut cannot lose a rename the manifest relies on."""
        for folder in sorted(self._made_dirs):
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # chunks -----------------------------------------------------------------------------------------------
    def has_chunk(self, digest: str) -> bool:
        return self.chunk_path(digest).exists()

    def put_chunk(self, digest: str, raw: bytes, compression: str, base: str | None = None) -> int:
        """Store a chunk unless present, as a delta against `base` (the parent's chunk at the same place) when
        that is smaller; returns the bytes written (0 when it was already there)."""
        path = self.chunk_path(digest)
        if path.exists():
            return 0
        blob = None
        if base is not None and base != digest:
            try:
                base_raw, base_depth = self.read_chunk(base)
                blob = codec.delta_or_none(raw, base, base_raw, base_depth, compression)
            except ChunkDamaged:
                blob = None  # a damaged base: store this chunk whole, verify reports the base
        if blob is None:
            blob = codec.encode(raw, compression)
        self._atomic_write(path, blob, durable=False)
        return len(blob)

    def read_chunk(self, digest: str, _level: int = 0) -> tuple[bytes, int]:
        """(raw bytes, delta depth), verified; a delta's bases are read and verified on the way."""
        if _level > codec.MAX_DEPTH + 1:
            raise ChunkDamaged(digest, "undecodable (delta chain too deep)")
        try:
            blob = self.chunk_path(digest).read_bytes()
        except FileNotFoundError:
            raise ChunkDamaged(digest, "missing") from None
        except OSError as exc:
            raise ChunkDamaged(digest, f"unreadable ({exc.strerror})") from None
        raw = codec.decode(digest, blob, lambda base: self.read_chunk(base, _level + 1)[0])
        return raw, codec.depth(blob)

    def get_chunk(self, digest: str) -> bytes:
        try:
            return self.read_chunk(digest)[0]
        except ChunkDamaged as exc:
            if exc.digest != digest:
                exc.needed_for = digest
            raise

    def base_of(self, digest: str) -> str | None:
        try:
            with self.chunk_path(digest).open("rb") as fh:
                return codec.base_of(fh.read(37))
        except OSError:
            return None

    def chunk_names(self) -> Iterator[tuple[str, Path]]:
        chunks = self.root / "chunks"
        if not chunks.is_dir():
            return
        for sub in sorted(chunks.iterdir()):
            for entry in os.scandir(sub):
                yield entry.name, Path(entry.path)

    # manifests --------------------------------------------------------------------------------------------
    def write_manifest(self, manifest: BackupManifest) -> int:
        path = self.manifest_path(manifest.vm_uuid, manifest.snapshot)
        data = manifest.model_dump_json().encode()
        manifest.manifest_bytes = len(data)
        data = manifest.model_dump_json().encode()  # again, now carrying its own size (± a digit)
        self.sync()
        self._atomic_write(path, data)
        self.sync_dirs()
        return len(data)

    def read_manifest(self, path: Path) -> BackupManifest:
        try:
            return BackupManifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            raise OperationFailed(f"backup target {self.name}: manifest {path} is unreadable: "
                                  f"{str(exc).splitlines()[0]}") from None

    def manifests(self, vm_uuid: str | None = None) -> list[BackupManifest]:
        """Good backups (those with a manifest), oldest snapshot first."""
        base = self.root / "manifests"
        folders = [base / vm_uuid] if vm_uuid else (sorted(base.iterdir()) if base.is_dir() else [])
        out = [self.read_manifest(p) for folder in folders if folder.is_dir()
               for p in folder.glob("*.json")]
        return sorted(out, key=lambda m: (m.snapshot_created, m.snapshot))

    def delete_manifest(self, manifest: BackupManifest) -> None:
        self.manifest_path(manifest.vm_uuid, manifest.snapshot).unlink(missing_ok=True)

    # in progress ------------------------------------------------------------------------------------------
    def _intent_path(self, vm_uuid: str, snapshot: str) -> Path:
        return self.root / "incomplete" / f"{vm_uuid}--{snapshot}.json"

    def mark_incomplete(self, vm: str, vm_uuid: str, snapshot: str) -> None:
        data = {"vm": vm, "vm_uuid": vm_uuid, "snapshot": snapshot, "pid": os.getpid(), "host": os.uname().nodename}
        self._atomic_write(self._intent_path(vm_uuid, snapshot), json.dumps(data).encode())

    def clear_incomplete(self, vm_uuid: str, snapshot: str) -> None:
        self._intent_path(vm_uuid, snapshot).unlink(missing_ok=True)

    def incomplete(self) -> list[dict]:
        folder = self.root / "incomplete"
        out = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    # locking ----------------------------------------------------------------------------------------------
    @contextmanager
    def locked(self, exclusive: bool, wait: bool = True) -> Iterator[None]:
        """Backups hold the lock shared; garbage collection alone, so it never sweeps chunks being written."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                raise EnvironmentProblem(f"backup target {self.name} is busy (another backup or prune)") from None
            yield
        finally:
            os.close(fd)

    def collect_garbage(self) -> tuple[int, int]:
        """Remove chunks no manifest references, and temporary files of killed writers; (files, bytes) freed.
        The caller holds the lock exclusively. Any unreadable manifest stops it: its chunks might be live."""
        live: set[str] = set()
        for manifest in self.manifests():
            for disk in manifest.disks:
                live.update(d for _, d in disk.chunks if d is not None)
        frontier = list(live)
        while frontier:  # the bases of live delta chunks are live too
            base = self.base_of(frontier.pop())
            if base is not None and base not in live:
                live.add(base)
                frontier.append(base)
        removed = freed = 0
        for name, path in self.chunk_names():
            if name in live:
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            removed, freed = removed + 1, freed + size
        return removed, freed
