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

Everything read back is untrusted (whoever can write the export or the bucket can plant anything): keys are built
only from validated names (64-hex chunk ids, a UUID, a snapshot name), every read has a size limit checked before
the bytes are read, a dir target opens each path component with O_NOFOLLOW (a planted symlink, FIFO or device is
refused, never followed, never waited on) and creates files with O_EXCL, and a manifest that does not parse is
listed as damaged without hiding the others.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import stat
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kvmkit.backup import codec, seal
from kvmkit.backup.codec import ChunkDamaged
from kvmkit.backup.keys import RepoKeys
from kvmkit.backup.model import FORMAT_VERSION, MAX_CHUNK_SIZE, BackupManifest, DamagedManifest
from kvmkit.backup.tombstones import Tombstones
from kvmkit.errors import InvalidInput, NotFound, OperationFailed
from kvmkit.snapshot.snapshot_lock import flocked  # one flock helper for targets and snapshots

log = logging.getLogger(__name__)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if ctypes.util.find_library("c") else None
MARKER = "kvmkit-backup.json"
DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1000 keys; GC never holds more dead names than this
# Size limits, checked before a blob is read: a chunk's container holds at most MAX_CHUNK_SIZE raw bytes plus
# 5 bytes of frame header per 64 KiB and a delta's block list (4 bytes per 4 KiB block)
MAX_CHUNK_BLOB = MAX_CHUNK_SIZE + MAX_CHUNK_SIZE // 512 + 4096
MAX_MANIFEST_BYTES = 16 << 20  # ≈ 220 000 chunk entries: 200 TiB of non-zero 1 MiB chunks in one backup
MAX_SMALL_BLOB = 64 << 10  # the format marker, intents, the S3 lock record
_CHUNK_ID = re.compile(r"^[0-9a-f]{64}$")
SETTLE = 5.0  # seconds: a writer's wait between its last touch and its final check (gc.py says why)


class SweepBlocked(OperationFailed):
    """Garbage collection refused: a damaged manifest's chunks may be live, so none may be swept."""


class ManifestDamaged(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def chunk_key(digest: str) -> str:
    """The only way a chunk's name is made: from a 64-hex id, never from anything else a manifest says."""
    if not isinstance(digest, str) or not _CHUNK_ID.match(digest):
        raise ChunkDamaged(repr(digest)[:80], "not a chunk id (64 hex digits)")
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
    keys: RepoKeys | None = None  # keys.py: set by keyring.attach for a repository with keys (marker format 2)
    gc_margin: float | None = None  # seconds (None: gc.GC_MARGIN); from the target's config (gc.collect uses it)
    reused: set[str] | None = None  # a writer's reused chunks (create.py sets a set; None: not tracked)
    last_touch: float = 0.0
    _reused_lock = threading.Lock()
    marker: dict | None = None  # the format marker as read (None: a new, empty target)
    tombstones: Tombstones | None = None  # tombstones.py: set by keyring.attach for a repository with keys

    @property
    def id_key(self) -> bytes | None:
        return self.keys.id_key if self.keys is not None else None

    @property
    def encrypted(self) -> bool:
        return self.keys is not None and self.keys.encrypted

    def _keyed(self) -> bool:
        """The marker says this repository has keys: nothing may be read or written without them."""
        return self.marker is not None and self.marker.get("format") == 2

    def _need_keys(self) -> None:
        if self._keyed() and self.keys is None:
            raise InvalidInput(f"backup target {self.name}: the repository has keys; open it through its "
                               "configured target (keys are not loaded)")

    # storage primitives ------------------------------------------------------------------------------------------
    @abstractmethod
    def _put(self, key: str, data: bytes, durable: bool = True) -> None:
        """Store data under key so that the name appears only with its whole content; a full target raises
        OperationFailed(self._full_message(key, why)). durable=False: `sync` makes it durable later."""

    @abstractmethod
    def _get(self, key: str, limit: int = MAX_SMALL_BLOB) -> bytes | None:
        """The blob, or None when there is none. OSError for a blob that cannot be read or is larger than limit
        (damage: refused before its bytes are read); transport failures raise KvmkitError."""

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

    @contextmanager
    def folder_cache(self) -> Iterator[None]:
        """Within: chunk folders may stay open between calls (dir.py: a backup or restore touches each of the
        256 chunk folders thousands of times). A no-op for stores without folders."""
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

    def _check_format(self, mark_legacy: bool = True) -> None:
        """Refuse a target written by another format; mark a new one (a later version must not misread it).
        mark_legacy=False: leave a new target unmarked, for keyring.attach to mark it with its keys."""
        try:
            blob = self._get(MARKER, MAX_SMALL_BLOB)
        except OSError as exc:
            raise OperationFailed(f"backup target {self.name}: {MARKER} is unreadable: {exc.strerror}") from None
        if blob is None:
            self.marker = None
            if mark_legacy:
                self.marker = {"format": FORMAT_VERSION, "tool": "kvmkit"}
                self._put(MARKER, json.dumps(self.marker).encode())
            return
        try:
            marker = json.loads(blob)
            version = marker.get("format")
        except (ValueError, AttributeError, RecursionError) as exc:
            raise OperationFailed(f"backup target {self.name}: {MARKER} is unreadable: {exc}") from None
        if version not in (FORMAT_VERSION, 2):
            raise InvalidInput(f"backup target {self.name}: format {version}, this kvmkit reads {FORMAT_VERSION} "
                               "and 2")
        self.marker = marker

    # chunks ------------------------------------------------------------------------------------------------------
    def has_chunk(self, digest: str) -> bool:
        return self._exists(chunk_key(digest))

    def put_chunk(self, digest: str, raw: bytes, compression: str, base: str | None = None) -> int:
        """Store a chunk unless present, as a delta against `base` (the parent's chunk at the same place) when
        that is smaller; returns the bytes written (0 when it was already there)."""
        self._need_keys()
        if self.reuse(digest):
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
        return self._put_sealed(digest, blob)

    def _put_sealed(self, digest: str, blob: bytes) -> int:
        if self.keys is not None and self.keys.enc_key is not None:
            blob = seal.seal_chunk(self.keys, digest, blob)
        self._put(chunk_key(digest), blob, durable=False)
        return len(blob)

    def put_blob(self, digest: str, blob: bytes, checked: bool = False) -> int:
        """Store an already encoded chunk unless present (an incremental encodes its deltas itself, from the
        changed blocks and the parent's block digests, without reading the parent back); bytes written.
        checked: the caller's own `reuse` just said it is absent (not asked twice)."""
        self._need_keys()
        if not checked and self.reuse(digest):
            return 0
        return self._put_sealed(digest, blob)

    def depth_of(self, digest: str) -> int | None:
        """A stored chunk's delta depth from its header alone (None: absent or unreadable), so a new delta on
        top of it never exceeds codec.MAX_DEPTH."""
        head = self._get_head(chunk_key(digest), codec.DEPTH_HEAD)
        if head is None or len(head) < 5 or head[:4] != (seal.CHUNK_MAGIC if self.encrypted else codec.MAGIC):
            return None
        if codec.base_of(head) is not None and len(head) < codec.DEPTH_HEAD:
            return None  # a delta header cut short: damaged, build nothing on it
        return codec.depth(head)

    def read_chunk(self, digest: str, _level: int = 0, limit: int = MAX_CHUNK_SIZE,
                   bases: Any = None, _verify: bool = True) -> tuple[bytes, int]:
        """(raw bytes, delta depth), verified. A delta's bases are decoded without hashing them (the delta's own
        hash covers every byte it takes from them: one sha256 per chunk, not one per chain link); when that
        hash fails, the chain is read again with every link verified, so the damaged link is the one named.
        limit: the most raw bytes the chunk may decode to (its length on the disk being restored). bases: a
        cache with get(digest, load) so a base many deltas share is decoded once (restore_writer)."""
        if _level > codec.MAX_DEPTH + 1:
            raise ChunkDamaged(digest, "undecodable (delta chain too deep)")
        key = chunk_key(digest)
        try:
            blob = self._get(key, MAX_CHUNK_BLOB)
        except OSError as exc:
            raise ChunkDamaged(digest, f"unreadable ({exc.strerror})") from None
        if blob is None:
            raise ChunkDamaged(digest, "missing")
        self._need_keys()
        if self.encrypted:
            assert self.keys is not None
            try:
                blob = seal.open_chunk(self.keys, digest, blob)
            except seal.SealBroken as exc:
                raise ChunkDamaged(digest, f"seal broken: {exc}") from None

        def base(name: str) -> bytes:
            load = lambda: self.read_chunk(name, _level + 1, limit, bases, _verify=False)[0]  # noqa: E731
            return load() if bases is None else bases.get(name, load)
        try:
            # sealed: the AEAD tag, bound to this chunk id, already proves these are the bytes a key holder stored
            # under this name; the block-tree hash would be a second full pass for nothing
            raw = codec.decode(digest, blob, base, limit, verify=_verify and not self.encrypted, id_key=self.id_key)
        except ChunkDamaged as exc:
            based_on = codec.base_of(blob[:37])
            if based_on is None or not _verify:
                raise
            try:  # which link is damaged: the base (verified now), or this delta
                self.read_chunk(based_on, _level + 1, limit)
            except ChunkDamaged as base_damage:
                raise base_damage from None
            raise exc from None
        return raw, codec.depth(blob)

    def get_chunk(self, digest: str, limit: int = MAX_CHUNK_SIZE, bases: Any = None) -> bytes:
        try:
            return self.read_chunk(digest, limit=limit, bases=bases)[0]
        except ChunkDamaged as exc:
            if exc.digest != digest:
                exc.needed_for = digest
            raise

    def base_of(self, digest: str) -> str | None:
        try:
            key = chunk_key(digest)
        except ChunkDamaged:
            return None
        head = self._get_head(key, 37)
        return codec.base_of(head) if head is not None else None

    # manifests ---------------------------------------------------------------------------------------------------
    def has_manifest(self, vm_uuid: str, snapshot: str) -> bool:
        return self._exists(manifest_key(vm_uuid, snapshot))

    def write_manifest(self, manifest: BackupManifest) -> int:
        self._need_keys()
        if self._keyed() and any(d.content_digest is None for d in manifest.disks):
            raise OperationFailed(f"backup target {self.name}: a manifest without a content digest is refused")
        data = manifest.model_dump_json().encode()
        manifest.manifest_bytes = len(data)
        data = manifest.model_dump_json().encode()  # again, now carrying its own size (± a digit)
        if self.keys is not None:
            data = seal.seal_manifest(self.keys, manifest.vm_uuid, manifest.snapshot, data)
        self.sync()
        self._put(manifest_key(manifest.vm_uuid, manifest.snapshot), data)
        self.sync_dirs()
        return len(data)

    def _read_manifest(self, key: str) -> BackupManifest | None:
        """The manifest at key (None: deleted meanwhile), or ManifestDamaged: unreadable, too large, not the
        strict model, or naming another backup than its key (a copied manifest must not pose as another VM's)."""
        try:
            blob = self._get(key, MAX_MANIFEST_BYTES)
            manifest = None if blob is None else BackupManifest.model_validate_json(self._unseal_manifest(key, blob))
        except OSError as exc:
            raise ManifestDamaged(key, f"unreadable ({exc.strerror})") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            value = first.get("input")
            shown = f" (got {repr(value)[:80]})" if isinstance(value, str | int | float) else ""
            raise ManifestDamaged(key, f"{where}: {first['msg']}{shown}"[:400]) from None
        except (ValueError, RecursionError) as exc:
            raise ManifestDamaged(key, str(exc).splitlines()[0][:300]) from None
        if manifest is not None and manifest_key(manifest.vm_uuid, manifest.snapshot) != key:
            raise ManifestDamaged(key, f"it describes backup {manifest.vm_uuid}/{manifest.snapshot}, not its own name")
        if manifest is not None and self._keyed() and any(d.content_digest is None for d in manifest.disks):
            raise ManifestDamaged(key, "a disk has no content digest (mandatory in a repository with keys)")
        if manifest is not None and self.tombstones is not None and self.tombstones.buried(self, manifest):
            raise ManifestDamaged(key, "a deleted backup put back (a tombstone says this very backup was deleted)")
        return manifest

    def _unseal_manifest(self, key: str, blob: bytes) -> bytes:
        """The manifest's JSON: opened with the repository's keys, bound to the name it was read under; a
        legacy repository's plain JSON as it is."""
        if self.keys is None:
            if self._keyed():
                raise ManifestDamaged(key, "the repository has keys and they are not loaded")
            if blob[:4] == b"KVMS" or blob[:4] == b"KVMA":
                raise ManifestDamaged(key, "sealed, in a repository without keys")
            return blob
        parts = key.split("/")
        if len(parts) != 3 or not parts[2].endswith(".json"):
            raise ManifestDamaged(key, "not a manifest's name")
        try:
            return seal.open_manifest(self.keys, parts[1], parts[2][:-5], blob)
        except seal.SealBroken as exc:
            raise ManifestDamaged(key, f"seal broken: {exc}") from None

    def scan_manifests(self, vm_uuid: str | None = None, headers: bool = False,
                       keep: Callable[[BackupManifest], bool] | None = None,
                       ) -> tuple[list[BackupManifest], list[DamagedManifest]]:
        """(good backups oldest snapshot first, damaged manifests): one bad manifest never hides the others.
        headers: drop each manifest's chunk lists once it parsed (`full` loads one back), so listing a target
        holds one manifest's chunks at a time, not every backup's; except those `keep` selects (one VM's)."""
        prefix = f"manifests/{vm_uuid}/" if vm_uuid else "manifests/"
        if vm_uuid is None and self.tombstones is not None:
            self.tombstones.preload(self)
        good: list[BackupManifest] = []
        damaged: list[DamagedManifest] = []
        for key in sorted(key for key, _ in self._list(prefix) if _is_json(key)):
            try:
                manifest = self._read_manifest(key)
            except ManifestDamaged as exc:
                log.info("damaged manifest", extra={"target": self.name, "key": key, "problem": exc.problem})
                damaged.append(DamagedManifest(key=key, problem=exc.problem))
                continue
            if manifest is not None:
                good.append(_header(manifest) if headers and not (keep and keep(manifest)) else manifest)
        return sorted(good, key=lambda m: (m.snapshot_created, m.snapshot)), damaged

    def manifests(self, vm_uuid: str | None = None, headers: bool = False) -> list[BackupManifest]:
        """Good backups (those with a manifest that parses), oldest snapshot first; damaged ones are skipped."""
        return self.scan_manifests(vm_uuid, headers)[0]

    def delete_manifest(self, manifest: BackupManifest) -> None:
        if self.tombstones is not None:  # first: a copy of the manifest put back later must not count
            self.tombstones.bury(self, manifest)
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
                blob = self._get(key, MAX_SMALL_BLOB) if _is_json(key) else None
                record = json.loads(blob) if blob is not None else None
                if isinstance(record, dict):
                    out.append({k: str(v)[:200] for k, v in record.items() if k in INTENT_KEYS})
            except (OSError, ValueError, RecursionError):
                continue
        return out

    # garbage collection ------------------------------------------------------------------------------------------
    def live_chunks(self) -> set[str]:
        """Every chunk a manifest names, and the bases of live delta chunks (transitively). Any unreadable
        manifest stops it: its chunks might be live."""
        live: set[str] = set()
        for key in sorted(key for key, _ in self._list("manifests/") if _is_json(key)):  # one manifest at a time
            try:
                manifest = self._read_manifest(key)
            except ManifestDamaged as exc:
                raise SweepBlocked(f"backup target {self.name}: manifest {key} is damaged ({exc.problem}); "
                                   "garbage collection cannot know which chunks it needs: repair or remove it "
                                   "first") from None
            for disk in manifest.disks if manifest is not None else []:
                live.update(d for _, d in disk.chunks if d is not None)
        frontier = list(live)
        while frontier:
            base = self.base_of(frontier.pop())
            if base is not None and base not in live:
                live.add(base)
                frontier.append(base)
        return live

    def reuse(self, digest: str) -> bool:
        """A writer relying on a chunk already stored: True when it is there, and then touched (its modification
        time becomes the storage's now, so no garbage collection running meanwhile sweeps it) and remembered
        for the writer's final check (`missing_reused`)."""
        key = chunk_key(digest)
        if not self._exists(key):
            return False
        if self.reused is not None:
            if not self._touch(key):
                return False
            with self._reused_lock:
                self.reused.add(digest)
                self.last_touch = time.monotonic()
        return True

    def missing_reused(self) -> list[str]:
        """Chunks this writer relied on that are gone now (checked SETTLE after the last touch: gc.py)."""
        wait = self.last_touch + SETTLE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return [d for d in sorted(self.reused or ()) if not self._exists(chunk_key(d))]


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _header(manifest: BackupManifest) -> BackupManifest:
    return manifest.model_copy(update={"disks": [d.model_copy(update={"chunks": []}) for d in manifest.disks]})


INTENT_KEYS = ("vm", "vm_uuid", "snapshot", "pid", "host")


def _is_json(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith(".json") and not name.startswith(".")  # not a dir target's temporary file


class DirTarget(ChunkStore):
    """A local folder or a mounted NFS export. Files are 0600, folders 0700; every file is written beside its
    name and renamed in; chunks skip the fsync (one syncfs before the manifest makes them all durable)."""

    def __init__(self, name: str, root: Path, mark_legacy: bool = True) -> None:
        self.name, self.root, self.location = name, root, str(root)
        if not root.is_dir():
            raise NotFound(f"backup target {name}: {root} is not a folder (is the export mounted?)")
        self._made_dirs: set[Path] = set()
        self._folders: dict[tuple[str, ...], int] | None = None  # folder_cache: open chunk folders
        self._folders_lock = threading.Lock()
        self._check_format(mark_legacy)

    # paths -------------------------------------------------------------------------------------------------------
    def chunk_path(self, digest: str) -> Path:
        return self.root / chunk_key(digest)

    def manifest_path(self, vm_uuid: str, snapshot: str) -> Path:
        return self.root / manifest_key(vm_uuid, snapshot)

    @contextmanager
    def folder_cache(self) -> Iterator[None]:
        """Within: each chunk folder (chunks/ab) is opened once, component by component as always, and its fd
        kept; a call then gets a dup of it (one syscall, no path walk) instead of three opens and three closes.
        A backup's or restore's own block: closed at its end, never kept across operations (a folder swapped
        for a symlink meanwhile is not followed either way: the kept fd is the folder that was checked)."""
        if self._folders is not None:  # nested: the outer block owns it
            yield
            return
        self._folders = {}
        try:
            yield
        finally:
            with self._folders_lock:
                folders, self._folders = self._folders, None
            for fd in folders.values():
                os.close(fd)

    def _folder(self, parts: list[str], create: bool = False) -> int:
        """An fd of the folder root/parts…, each component opened with O_NOFOLLOW below the root (a planted
        symlinked folder is refused, not followed); create: make missing ones 0700."""
        key = tuple(parts)
        cache = self._folders
        if cache is not None and len(key) == 2 and key[0] == "chunks":
            kept = cache.get(key)  # one dict lookup (atomic); fds are closed only when the block ends
            if kept is not None:
                return os.dup(kept)
            fd = self._open_folder(parts, create)
            with self._folders_lock:
                if self._folders is cache and key not in cache:
                    cache[key] = os.dup(fd)
            return fd
        return self._open_folder(parts, create)

    def _open_folder(self, parts: list[str], create: bool) -> int:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                if part in ("", ".", "..") or "\x00" in part:
                    raise OSError(errno.EINVAL, f"bad path component {part!r}")
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_file(self, key: str) -> int | None:
        """fd of the regular file at key, or None when absent; OSError for a symlink, FIFO, device or folder
        (opened O_NONBLOCK so a FIFO cannot hang us, checked by fstat before any read)."""
        *parts, name = key.split("/")
        try:
            folder = self._folder(parts)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OSError(exc.errno, f"a path component is not a plain folder ({exc.strerror})") from None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "a symbolic link, not a file") from None
            raise
        finally:
            os.close(folder)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(mode)})")
        return fd

    # primitives --------------------------------------------------------------------------------------------------
    def _put(self, key: str, data: bytes, durable: bool = True) -> None:
        """Write beside (O_EXCL|O_NOFOLLOW), (fsync,) rename: the name appears only with its whole content."""
        *parts, name = key.split("/")
        tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        folder = -1
        try:
            folder = self._folder(parts, create=True)
            self._made_dirs.add(self.root.joinpath(*parts))
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)  # our own name, left by a killed writer with this pid and thread
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=folder)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as exc:
            if folder >= 0:
                with suppress(OSError):
                    os.unlink(tmp, dir_fd=folder)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OperationFailed(self._full_message(key, exc.strerror or "no space")) from None
            raise OperationFailed(f"backup target {self.name}: writing {self.root / key}: {exc.strerror}") from None
        finally:
            if folder >= 0:
                os.close(folder)

    def _get(self, key: str, limit: int = MAX_SMALL_BLOB) -> bytes | None:
        fd = self._open_file(key)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise OSError(errno.EFBIG, f"{size} bytes, more than the {limit} allowed")
            data = b""
            while len(data) <= size:  # a file that grows while read is caught by the + 1
                more = os.read(fd, size + 1 - len(data))
                if not more:
                    break
                data += more
            if len(data) > limit:
                raise OSError(errno.EFBIG, f"more than the {limit} bytes allowed")
            return data
        finally:
            os.close(fd)

    def _get_head(self, key: str, size: int) -> bytes | None:
        try:
            fd = self._open_file(key)
        except OSError:
            return None
        if fd is None:
            return None
        try:
            return os.read(fd, size)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _exists(self, key: str) -> bool:
        """Only a regular file counts: a planted symlink under a chunk's name is written over, not trusted."""
        *parts, name = key.split("/")
        try:
            folder = self._folder(parts)
        except OSError:
            return False
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
        except OSError:
            return False
        finally:
            os.close(folder)

    def _mtime(self, key: str) -> float | None:
        *parts, name = key.split("/")
        try:
            folder = self._folder(parts)
        except OSError:
            return None
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            return info.st_mtime if stat.S_ISREG(info.st_mode) else None
        except OSError:
            return None
        finally:
            os.close(folder)

    def _touch(self, key: str) -> bool:
        """mtime := now (on NFS the server's now: utime(NULL) is sent as SET_TO_SERVER_TIME); False if gone."""
        *parts, name = key.split("/")
        try:
            folder = self._folder(parts)
        except OSError:
            return False
        try:
            os.utime(name, dir_fd=folder, follow_symlinks=False)
            return True
        except OSError:
            return False
        finally:
            os.close(folder)

    def _list_times(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        for key, _ in self._list(prefix):
            try:
                info = os.stat(self.root / key, follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield key, info.st_size, info.st_mtime

    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        top = self.root
        for part in Path(prefix).parts:  # a planted symlinked folder is not listed (nor followed)
            top = top / part
            if top.is_symlink() or not top.is_dir():
                return
        for folder, _, files in os.walk(top):  # never descends symlinked folders
            rel = Path(folder).relative_to(self.root)
            for name in files:
                try:
                    info = os.stat(os.path.join(folder, name), follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield f"{rel}/{name}", info.st_size

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            *parts, name = key.split("/")
            try:
                folder = self._folder(parts)
            except OSError:
                continue  # nothing of ours can be there: a missing or planted folder
            try:
                os.unlink(name, dir_fd=folder)  # unlink never follows a symlink: it removes the link itself
            except FileNotFoundError:
                pass
            finally:
                os.close(folder)

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
        """Backups take no lock (their leases announce them, gc.py keeps what they rely on); prunes and deletes
        take a flock on <root>/lock, which keeps them apart across hosts where the filesystem shares flocks
        (NFSv4 does)."""
        if not exclusive:
            yield
            return
        with flocked(self.root / "lock", exclusive, wait, f"backup target {self.name} is busy (another backup or "
                                                           "prune)"):
            yield
