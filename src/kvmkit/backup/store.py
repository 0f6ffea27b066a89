"""Backup targets: content-addressed chunks and JSON manifests, on a folder (here) or in an S3 bucket (s3.py).

Layout (the same names as folders/files or as object keys):
    kvmkit-backup.json                      format marker
    chunks/ab/<sha256>                      see codec.py (raw, zlib frames or a delta; named by the raw bytes' sha256)
    manifests/<vm_uuid>/<snapshot>.json     one per good backup
    incomplete/<vm_uuid>--<snapshot>.json   intent of a backup in progress (informational)
    lock                                    dir: flock file; s3: the record of an exclusive holder (see s3.py)

`ChunkStore` holds everything that does not depend on where the bytes live — the delta decision, decoding and
verifying chunks (and their bases), manifests, intents, the format check, garbage collection — over six storage
primitives (`_put`, `_get`, `_get_head`, `_exists`, `_list`, `_delete`) that `DirTarget` and `S3Target` implement.
A name appears only with its whole content (dir: rename after write; S3: a PUT is atomic), so a reader never sees
half a chunk or half a manifest; a backup is good exactly when its manifest exists. Chunks a killed backup left
behind are reused by the retried run (its writes skip chunks already present) or removed by the next garbage
collection.
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
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from kvmkit.backup import codec
from kvmkit.backup.codec import ChunkDamaged
from kvmkit.backup.model import FORMAT_VERSION, BackupManifest
from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound, OperationFailed

log = logging.getLogger(__name__)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if ctypes.util.find_library("c") else None
MARKER = "kvmkit-backup.json"
DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1000 keys; GC never holds more dead names than this


def chunk_key(digest: str) -> str:
    return f"chunks/{digest[:2]}/{digest}"


def manifest_key(vm_uuid: str, snapshot: str) -> str:
    return f"manifests/{vm_uuid}/{snapshot}.json"


def intent_key(vm_uuid: str, snapshot: str) -> str:
    return f"incomplete/{vm_uuid}--{snapshot}.json"


class ChunkStore(ABC):
    """What a backup target is to create/restore/manage: chunks, manifests, intents, a lock, garbage collection.

    Subclasses store opaque named blobs; every decision about what to store and whether what comes back is right
    is made here, once, so a new backend cannot get deltas, verification or the GC liveness walk subtly wrong."""

    name: str
    location: str  # for people: a folder, or "bucket B on ENDPOINT"

    # storage primitives ------------------------------------------------------------------------------------------
    @abstractmethod
    def _put(self, key: str, data: bytes, durable: bool = True) -> None:
        """Store data under key so that the name appears only with its whole content; a full target raises
        OperationFailed(self._full_message(key, why)). durable=False: `sync` makes it durable later."""

    @abstractmethod
    def _get(self, key: str) -> bytes | None:
        """The blob, or None when there is none. A dir target raises OSError for a blob it cannot read (damage);
        transport failures raise KvmkitError."""

    @abstractmethod
    def _get_head(self, key: str, size: int) -> bytes | None:
        """The first `size` bytes (a chunk's header), None when absent or unreadable."""

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every blob under prefix ("chunks/"), a page at a time: never the whole listing in memory."""

    @abstractmethod
    def _delete(self, keys: list[str]) -> None:
        """Remove these blobs (at most DELETE_BATCH); absent ones are not an error."""

    @abstractmethod
    @contextmanager
    def locked(self, exclusive: bool, wait: bool = True) -> Iterator[None]:
        """Backups hold the lock shared; garbage collection alone, so it never sweeps chunks being written."""
        yield

    def sync(self) -> None:
        """Make every chunk written so far durable before a manifest names them (a no-op where a write is)."""
        return None

    def sync_dirs(self) -> None:
        """Make new names durable (a no-op where a write is)."""
        return None

    def _full_message(self, key: str, why: str) -> str:
        return (f"backup target {self.name} is full ({why}) writing {key.rsplit('/', 1)[-1]}; the backup is not "
                "recorded, a rerun after freeing space resumes it")

    def _check_format(self) -> None:
        """Refuse a target written by another format; mark a new one (a later version must not misread it)."""
        try:
            blob = self._get(MARKER)
        except OSError as exc:
            raise OperationFailed(f"backup target {self.name}: {MARKER} is unreadable: {exc.strerror}") from None
        if blob is None:
            self._put(MARKER, json.dumps({"format": FORMAT_VERSION, "tool": "kvmkit"}).encode())
            return
        try:
            version = json.loads(blob).get("format")
        except (ValueError, AttributeError) as exc:
            raise OperationFailed(f"backup target {self.name}: {MARKER} is unreadable: {exc}") from None
        if version != FORMAT_VERSION:
            raise InvalidInput(f"backup target {self.name}: format {version}, this kvmkit reads {FORMAT_VERSION}")

    # chunks ------------------------------------------------------------------------------------------------------
    def has_chunk(self, digest: str) -> bool:
        return self._exists(chunk_key(digest))

    def put_chunk(self, digest: str, raw: bytes, compression: str, base: str | None = None) -> int:
        """Store a chunk unless present, as a delta against `base` (the parent's chunk at the same place) when
        that is smaller; returns the bytes written (0 when it was already there)."""
        if self.has_chunk(digest):
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
        self._put(chunk_key(digest), blob, durable=False)
        return len(blob)

    def put_blob(self, digest: str, blob: bytes) -> int:
        """Store an already encoded chunk unless present (an incremental encodes its deltas itself, from the
        changed blocks and the parent's block digests, without reading the parent back); bytes written."""
        if self.has_chunk(digest):
            return 0
        self._put(chunk_key(digest), blob, durable=False)
        return len(blob)

    def depth_of(self, digest: str) -> int | None:
        """A stored chunk's delta depth from its header alone (None: absent or unreadable), so a new delta on
        top of it never exceeds codec.MAX_DEPTH."""
        head = self._get_head(chunk_key(digest), codec.DEPTH_HEAD)
        if head is None or len(head) < 5 or head[:4] != codec.MAGIC:
            return None
        if codec.base_of(head) is not None and len(head) < codec.DEPTH_HEAD:
            return None  # a delta header cut short: damaged, build nothing on it
        return codec.depth(head)

    def read_chunk(self, digest: str, _level: int = 0) -> tuple[bytes, int]:
        """(raw bytes, delta depth), verified; a delta's bases are read and verified on the way."""
        if _level > codec.MAX_DEPTH + 1:
            raise ChunkDamaged(digest, "undecodable (delta chain too deep)")
        try:
            blob = self._get(chunk_key(digest))
        except OSError as exc:
            raise ChunkDamaged(digest, f"unreadable ({exc.strerror})") from None
        if blob is None:
            raise ChunkDamaged(digest, "missing")
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
        head = self._get_head(chunk_key(digest), 37)
        return codec.base_of(head) if head is not None else None

    # manifests ---------------------------------------------------------------------------------------------------
    def has_manifest(self, vm_uuid: str, snapshot: str) -> bool:
        return self._exists(manifest_key(vm_uuid, snapshot))

    def write_manifest(self, manifest: BackupManifest) -> int:
        data = manifest.model_dump_json().encode()
        manifest.manifest_bytes = len(data)
        data = manifest.model_dump_json().encode()  # again, now carrying its own size (± a digit)
        self.sync()
        self._put(manifest_key(manifest.vm_uuid, manifest.snapshot), data)
        self.sync_dirs()
        return len(data)

    def _read_manifest(self, key: str) -> BackupManifest | None:
        try:
            blob = self._get(key)
            return None if blob is None else BackupManifest.model_validate_json(blob)
        except (OSError, ValidationError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
            raise OperationFailed(f"backup target {self.name}: manifest {key} is unreadable: {detail}") from None

    def manifests(self, vm_uuid: str | None = None) -> list[BackupManifest]:
        """Good backups (those with a manifest), oldest snapshot first."""
        prefix = f"manifests/{vm_uuid}/" if vm_uuid else "manifests/"
        keys = [key for key, _ in self._list(prefix) if _is_json(key)]
        found = [m for m in map(self._read_manifest, keys) if m is not None]  # None: deleted meanwhile
        return sorted(found, key=lambda m: (m.snapshot_created, m.snapshot))

    def delete_manifest(self, manifest: BackupManifest) -> None:
        self._delete([manifest_key(manifest.vm_uuid, manifest.snapshot)])

    # in progress -------------------------------------------------------------------------------------------------
    def mark_incomplete(self, vm: str, vm_uuid: str, snapshot: str) -> None:
        data = {"vm": vm, "vm_uuid": vm_uuid, "snapshot": snapshot, "pid": os.getpid(), "host": os.uname().nodename}
        self._put(intent_key(vm_uuid, snapshot), json.dumps(data).encode())

    def clear_incomplete(self, vm_uuid: str, snapshot: str) -> None:
        self._delete([intent_key(vm_uuid, snapshot)])

    def incomplete(self) -> list[dict]:
        out = []
        for key, _ in sorted(self._list("incomplete/")):
            try:
                blob = self._get(key) if _is_json(key) else None
                if blob is not None:
                    out.append(json.loads(blob))
            except (OSError, ValueError):
                continue
        return out

    # garbage collection ------------------------------------------------------------------------------------------
    def live_chunks(self) -> set[str]:
        """Every chunk a manifest names, and the bases of live delta chunks (transitively). Any unreadable
        manifest stops it: its chunks might be live."""
        live: set[str] = set()
        for manifest in self.manifests():
            for disk in manifest.disks:
                live.update(d for _, d in disk.chunks if d is not None)
        frontier = list(live)
        while frontier:
            base = self.base_of(frontier.pop())
            if base is not None and base not in live:
                live.add(base)
                frontier.append(base)
        return live

    def collect_garbage(self) -> tuple[int, int]:
        """Remove chunks no manifest references, and temporary files of killed writers; (files, bytes) freed.
        The caller holds the lock exclusively. Memory: the live set, plus one batch of dead names."""
        live = self.live_chunks()
        removed = freed = 0
        for batch in _batches(((key, size) for key, size in self._list("chunks/")
                               if key.rsplit("/", 1)[-1] not in live), DELETE_BATCH):
            self._delete([key for key, _ in batch])
            removed, freed = removed + len(batch), freed + sum(size for _, size in batch)
        return removed, freed


def _is_json(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith(".json") and not name.startswith(".")  # not a dir target's temporary file


def _batches(items: Iterable[tuple[str, int]], size: int) -> Iterator[list[tuple[str, int]]]:
    batch: list[tuple[str, int]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class DirTarget(ChunkStore):
    """A local folder or a mounted NFS export. Files are 0600, folders 0700; every file is written beside its
    name and renamed in; chunks skip the fsync (one syncfs before the manifest makes them all durable)."""

    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root, self.location = name, root, str(root)
        if not root.is_dir():
            raise NotFound(f"backup target {name}: {root} is not a folder (is the export mounted?)")
        self._made_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._check_format()

    # paths -------------------------------------------------------------------------------------------------------
    def chunk_path(self, digest: str) -> Path:
        return self.root / chunk_key(digest)

    def manifest_path(self, vm_uuid: str, snapshot: str) -> Path:
        return self.root / manifest_key(vm_uuid, snapshot)

    def _dir(self, path: Path) -> Path:
        if path not in self._made_dirs:
            with self._dirs_lock:
                missing = [p for p in (path, *path.parents) if not p.exists()]
                for folder in reversed(missing):  # mkdir(parents=True) would give the parents umask modes
                    folder.mkdir(mode=0o700, exist_ok=True)
                self._made_dirs.add(path)
        return path

    # primitives --------------------------------------------------------------------------------------------------
    def _put(self, key: str, data: bytes, durable: bool = True) -> None:
        """Write beside, (fsync,) rename: the name appears only with its whole content."""
        path = self.root / key
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
                raise OperationFailed(self._full_message(key, exc.strerror or "no space")) from None
            raise OperationFailed(f"backup target {self.name}: writing {path}: {exc.strerror}") from None

    def _get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def _get_head(self, key: str, size: int) -> bytes | None:
        try:
            with (self.root / key).open("rb") as fh:
                return fh.read(size)
        except OSError:
            return None

    def _exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        top = self.root / prefix
        if not top.is_dir():
            return
        for folder, _, files in os.walk(top):
            rel = Path(folder).relative_to(self.root)
            for name in files:
                try:
                    size = os.stat(os.path.join(folder, name)).st_size
                except FileNotFoundError:
                    continue
                yield f"{rel}/{name}", size

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)

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

    @contextmanager
    def locked(self, exclusive: bool, wait: bool = True) -> Iterator[None]:
        """flock on <root>/lock: it works across hosts only where the filesystem shares flocks (NFSv4 does)."""
        with flocked(self.root / "lock", exclusive, wait, f"backup target {self.name} is busy (another backup or "
                                                           "prune)"):
            yield


@contextmanager
def flocked(path: Path, exclusive: bool, wait: bool, busy: str) -> Iterator[None]:
    """flock(path) shared or exclusive; without wait, EnvironmentProblem(busy) when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise EnvironmentProblem(busy) from None
        yield
    finally:
        os.close(fd)
