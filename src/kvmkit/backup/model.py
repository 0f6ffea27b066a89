"""Backup records: the manifest written to the target per backup, the same object `--json` prints.

A manifest names its VM, snapshot and parent backup, and per disk the chunks that make the disk up. A full disk
record lists every non-zero chunk; an incremental one lists only the chunks that differ from the parent's disk
(`null` where a chunk became zero), so restoring walks the chain back to a full record (see chunking.resolve).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20  # small enough that an incremental writes ≈ the changed bytes; see docs/backup.md


class Kind(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class ChangeMethod(StrEnum):
    """How a backup found what to read (see changes.py): recorded per disk and printed, so an operator sees
    which path ran."""

    FIEMAP = "fiemap"  # two reflink snapshots' extent maps compared: only changed blocks read
    RBD_DIFF = "rbd-diff"  # librbd diff_iterate since the parent's snapshot
    HASHES = "hashes"  # every data chunk read and hashed, compared with the parent's
    FULL = "full"  # no usable parent: every chunk with data read


class DiskBackup(BaseModel):
    target: str  # vda …: the key that matches a disk across snapshots
    driver: str  # file | rbd (of the snapshot that was read)
    source: str  # the VM's disk: file path or pool/image (default restore destination)
    handle: str  # the snapshot that was read: file path or pool/image@snap
    size_bytes: int
    full: bool  # True: `chunks` is the whole map; False: changes against the parent's record of this disk
    chunks: list[tuple[int, str | None]] = []  # (chunk index, sha256 hex of its raw bytes | None = zeros)
    read_bytes: int = 0  # bytes read from the snapshot
    changed_bytes: int = 0  # bytes of chunks that differ from the parent (all non-zero bytes for a full)
    diff_bytes: int | None = None  # RBD incremental: bytes diff_iterate reported changed since the parent
    written_bytes: int = 0  # bytes written to the target for this disk's new chunks (compressed)
    new_chunks: int = 0  # chunks this backup stored (the others were already on the target)
    change_method: ChangeMethod | None = None  # None: written by a kvmkit that did not record it
    # the snapshot file as it was read (st_dev:st_ino:mtime_ns:ctime_ns:size): the next backup compares extent
    # maps with it only if it is still that very file, untouched
    handle_identity: str | None = Field(default=None, max_length=128, pattern=r"^[0-9:]+$")


class BackupManifest(BaseModel):
    format: int = FORMAT_VERSION
    vm: str
    vm_uuid: str
    snapshot: str  # the snapshot's name: a backup is addressed as (VM, snapshot) on a target
    snapshot_created: datetime
    created: datetime
    parent: str | None = None  # snapshot name of the parent backup (same VM, same target)
    target: str
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression: str = "zlib"
    disks: list[DiskBackup] = []
    seconds: float = 0.0
    manifest_bytes: int = 0  # size of this manifest file on the target (known after it is written)

    @property
    def kind(self) -> Kind:
        return Kind.FULL if all(d.full for d in self.disks) else Kind.INCREMENTAL

    @property
    def written_bytes(self) -> int:
        return sum(d.written_bytes for d in self.disks)

    @property
    def read_bytes(self) -> int:
        return sum(d.read_bytes for d in self.disks)

    @property
    def changed_bytes(self) -> int:
        return sum(d.changed_bytes for d in self.disks)

    def disk(self, target: str) -> DiskBackup | None:
        return next((d for d in self.disks if d.target == target), None)

    def summary(self) -> dict:
        """What `backup list --json` prints per backup: the manifest without its chunk lists."""
        data = self.model_dump(mode="json", exclude={"disks": {"__all__": {"chunks"}}})
        data.update(kind=self.kind.value, written_bytes=self.written_bytes, read_bytes=self.read_bytes,
                    changed_bytes=self.changed_bytes)
        return data


class DamagedChunk(BaseModel):
    chunk: str  # sha256 name
    problem: str  # missing | hash mismatch | undecodable
    disks: list[str] = Field(default_factory=list)  # "SNAP:vda" of every checked backup disk that needs it


class VerifyReport(BaseModel):
    vm: str
    snapshots: list[str]
    chunks_checked: int
    bytes_checked: int
    damaged: list[DamagedChunk] = []
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged
