"""The local block index: per backed-up disk, each chunk's name and the sha256 of its 4 KiB blocks.

An incremental that knows which blocks changed (changes.py) reads only those, and needs the other blocks'
digests to name the new chunk (codec.chunk_id) and to encode it as a delta against the parent's chunk — without
fetching and decompressing the parent from the target. This file keeps them between backups: one fixed-size
record per chunk index, so a lookup or an update is one pread/pwrite and memory stays flat whatever the disk size
(the file is sparse: hole chunks cost nothing; 8 KiB per 1 MiB data chunk, 0.8 % of the data).

Records are untrusted and self-checking: a record is used only when its chunk name equals the parent backup's
name for that chunk AND its block digests hash to that name. So the file can be updated in place with no
journal: a torn write, a record left by a backup that died before its manifest, another host's backups or a
hand edit all fail the check, and that chunk is simply read whole from the snapshot instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import struct
from pathlib import Path

from kvmkit.backup import codec
from kvmkit.errors import EnvironmentProblem

log = logging.getLogger(__name__)
MAGIC = b"KVBIDX01"
HEADER = struct.Struct("<8sQI")  # magic, chunk size, block size
HEADER_SIZE = 64
DIGEST = 32
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _part(name: str) -> str:
    """A path component from a name kvmkit did not choose: kept when plainly safe, else hashed."""
    return name if _SAFE.match(name) else hashlib.sha256(name.encode()).hexdigest()[:32]


def index_path(state_dir: Path, target_name: str, target_location: str, vm_uuid: str, disk: str) -> Path:
    """<state_dir>/backup-index/<target>-<hash of its location>/<vm uuid>/<disk>.idx: two targets of the same
    name (a re-created bucket elsewhere) never share records."""
    where = hashlib.sha256(target_location.encode()).hexdigest()[:12]
    return state_dir / "backup-index" / f"{_part(target_name)}-{where}" / _part(vm_uuid) / f"{_part(disk)}.idx"


class BlockIndex:
    def __init__(self, path: Path, chunk_size: int, id_key: bytes | None = None) -> None:
        self.path, self.chunk_size, self.id_key = path, chunk_size, id_key
        self.per_chunk = -(-chunk_size // codec.DELTA_BLOCK)
        self.record = DIGEST + DIGEST * self.per_chunk
        try:
            for folder in reversed([p for p in (path.parent, *path.parent.parents) if not p.exists()]):
                folder.mkdir(mode=0o700, exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EnvironmentProblem(f"block index {path}: {exc.strerror}") from None
        info = os.fstat(self.fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self.fd)
            raise EnvironmentProblem(f"block index {path} is not a regular file")
        want = HEADER.pack(MAGIC, chunk_size, codec.DELTA_BLOCK).ljust(HEADER_SIZE, b"\0")
        try:
            if os.pread(self.fd, HEADER_SIZE, 0) != want:  # new, or written for another chunk size: start over
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, want, 0)
        except OSError as exc:
            os.close(self.fd)
            raise EnvironmentProblem(f"block index {path}: {exc.strerror}") from None

    def get(self, index: int, name: str, length: int) -> bytes | None:
        """The digest table of chunk `index` (codec.digest_table) if the record is for chunk `name` (of `length`
        bytes) and checks."""
        count = -(-length // codec.DELTA_BLOCK)
        if index < 0 or count > self.per_chunk:
            return None
        try:
            blob = os.pread(self.fd, DIGEST + DIGEST * count, HEADER_SIZE + index * self.record)
        except OSError:
            return None
        if len(blob) != DIGEST + DIGEST * count or blob[:DIGEST].hex() != name:
            return None
        table = blob[DIGEST:]
        return table if codec.table_id(table, self.id_key) == name else None

    def put(self, index: int, name: str, table: bytes | bytearray) -> None:
        if index < 0 or len(table) > DIGEST * self.per_chunk:
            return
        try:
            os.pwrite(self.fd, bytes.fromhex(name) + table, HEADER_SIZE + index * self.record)
        except OSError:  # a full state dir: the next backup reads this chunk whole, the backup goes on
            return

    def close(self) -> None:
        os.close(self.fd)


class NoIndex:
    """What a backup uses when the state dir cannot hold an index (read-only, full): no record is ever found, so
    every changed chunk is read whole — slower, never wrong, and the backup does not fail for a cache."""

    def get(self, index: int, name: str, length: int) -> bytes | None:
        return None

    def put(self, index: int, name: str, table: bytes | bytearray) -> None:
        return None

    def close(self) -> None:
        return None


def open_index(path: Path, chunk_size: int, id_key: bytes | None = None) -> BlockIndex | NoIndex:
    try:
        return BlockIndex(path, chunk_size, id_key)
    except EnvironmentProblem as exc:
        log.warning("no block index: %s", exc, extra={"path": str(path)})
        return NoIndex()
