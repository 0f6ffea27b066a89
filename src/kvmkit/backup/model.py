"""Backup records: the manifest written to the target per backup, the same object `--json` prints.

A manifest names its VM, snapshot and parent backup, and per disk the chunks that make the disk up. A full disk
record lists every non-zero chunk; an incremental one lists only the chunks that differ from the parent's disk
(`null` where a chunk became zero), so restoring walks the chain back to a full record (see chunking.resolve).

A repository is untrusted input (anyone who can write the NFS export or the bucket can edit it), so a manifest is
parsed strictly: no unknown keys, chunk ids of exactly 64 hex digits (a chunk's path is built from nothing else),
a canonical UUID, names by the CLI's own rules (kvmkit.names), sizes and lists bounded, chunk indexes inside the
disk and unique. Format 2 adds each disk's `content_digest` (see digest.py); format 1 manifests stay readable and
say that they carry none.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from kvmkit.names import SNAPSHOT_NAME_RE, UUID_RE, VM_NAME_RE

FORMAT_VERSION = 1  # the repository's layout (kvmkit-backup.json); manifests carry their own `format`
MANIFEST_FORMAT = 2  # 2: per-disk content_digest; 1: none (still read)
DEFAULT_CHUNK_SIZE = 1 << 20  # small enough that an incremental writes ≈ the changed bytes; see docs/backup.md
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 4 << 10, 16 << 20
MAX_DISK_BYTES = 1 << 50  # 1 PiB: far above any disk, far below what would overflow an offset
MAX_DISKS = 256
MAX_CHUNKS_PER_DISK = 1 << 26  # a 64 TiB disk of 1 MiB chunks
MAX_CHUNKS_TOTAL = 1 << 27  # all disks of one backup together
MAX_TEXT = 4096  # paths, handles

Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
VmName = Annotated[str, StringConstraints(pattern=VM_NAME_RE.pattern)]
SnapshotName = Annotated[str, StringConstraints(pattern=SNAPSHOT_NAME_RE.pattern)]
Uuid = Annotated[str, StringConstraints(pattern=UUID_RE.pattern)]
DiskTarget = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")]
Driver = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,32}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00\n]*$")]
TargetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")]
Count = Annotated[int, Field(ge=0, le=MAX_DISK_BYTES * 4)]


class Kind(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class ChangeMethod(StrEnum):
    """How a backup found what to read (see changes.py): recorded per disk and printed, so an operator sees
    which path ran."""

    FIEMAP = "fiemap"  # two reflink snapshots' extent maps compared: only changed blocks read
    RBD_DIFF = "rbd-diff"  # librbd diff_iterate since the parent's snapshot
    QCOW2_MAP = "qcow2-map"  # two reflink snapshots of a qcow2: allocation maps + extent maps (qcow2_changes.py)
    DIRTY_BITMAP = "dirty-bitmap"  # QEMU's dirty bitmap of a file disk without reflink, since the parent's snapshot
    HASHES = "hashes"  # every data chunk read and hashed, compared with the parent's
    FULL = "full"  # no usable parent: every chunk with data read


class DiskBackup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: DiskTarget  # vda …: the key that matches a disk across snapshots
    driver: Driver  # file | rbd (of the snapshot that was read)
    source: Text  # the VM's disk: file path or pool/image (default restore destination, checked like --to)
    # the format the VM's domain gave the disk (the backup holds guest-visible content whatever it was): a restore
    # onto the disk's own place writes it back in this format, so the domain's <driver type=…> stays true
    format: Literal["raw", "qcow2"] = "raw"
    handle: Text  # the snapshot that was read: file path or pool/image@snap
    size_bytes: int = Field(ge=0, le=MAX_DISK_BYTES)
    full: bool  # True: `chunks` is the whole map; False: changes against the parent's record of this disk
    # (chunk index, sha256 hex of its raw bytes | None = zeros)
    chunks: list[tuple[Annotated[int, Field(ge=0)], Digest | None]] = Field(default=[],
                                                                          max_length=MAX_CHUNKS_PER_DISK)
    # sha256 over the per-chunk sha256s of the whole guest-visible disk (digest.py); None in format-1 manifests
    content_digest: Digest | None = None
    read_bytes: Count = 0  # bytes read from the snapshot
    changed_bytes: Count = 0  # bytes of chunks that differ from the parent (all non-zero bytes for a full)
    diff_bytes: Count | None = None  # RBD incremental: bytes diff_iterate reported changed since the parent
    written_bytes: Count = 0  # bytes written to the target for this disk's new chunks (compressed)
    new_chunks: Count = 0  # chunks this backup stored (the others were already on the target)
    change_method: ChangeMethod | None = None  # None: written by a kvmkit that did not record it
    # the snapshot file as it was read (st_dev:st_ino:mtime_ns:ctime_ns:size): the next backup compares extent
    # maps with it only if it is still that very file, untouched
    handle_identity: str | None = Field(default=None, max_length=128, pattern=r"^[0-9:]+$")


class BackupManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1, 2] = MANIFEST_FORMAT
    vm: VmName
    vm_uuid: Uuid
    snapshot: SnapshotName  # the snapshot's name: a backup is addressed as (VM, snapshot) on a target
    snapshot_created: datetime
    created: datetime
    parent: SnapshotName | None = None  # snapshot name of the parent backup (same VM, same target)
    target: TargetName
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    compression: Literal["zstd", "zlib", "none"] = "zlib"
    disks: list[DiskBackup] = Field(default=[], max_length=MAX_DISKS)
    seconds: float = Field(default=0.0, ge=0, le=1e9)
    host: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")] | None = None  # writer
    manifest_bytes: int = Field(default=0, ge=0)  # size of this manifest file on the target (known after written)

    @field_validator("snapshot_created", "created")
    @classmethod
    def _local_naive(cls, value: datetime) -> datetime:
        """kvmkit writes local naive times; one with a zone (another writer, a hand edit) is made comparable with
        them (listing sorts by it: a mix must not crash) by converting it to local time."""
        return value.astimezone().replace(tzinfo=None) if value.tzinfo is not None else value

    @model_validator(mode="after")
    def _consistent(self) -> BackupManifest:
        """What a field-by-field check cannot see: chunk indexes inside their disk and unique, disk names unique,
        a chunk size that divides into 4 KiB blocks (the delta codec's unit), no parent loop onto itself."""
        if self.chunk_size % 4096:
            raise ValueError(f"chunk_size {self.chunk_size} is not a multiple of 4096")
        if self.parent == self.snapshot:
            raise ValueError("a backup cannot be its own parent")
        seen: set[str] = set()
        total = 0
        for disk in self.disks:
            if disk.target in seen:
                raise ValueError(f"disk {disk.target} is listed twice")
            seen.add(disk.target)
            count = (disk.size_bytes + self.chunk_size - 1) // self.chunk_size
            # every walk over a disk (content digest, restore's zero runs, verify) is bounded by its chunk count:
            # a 501-byte manifest must not declare 2^38 chunks
            total += count
            if count > MAX_CHUNKS_PER_DISK or total > MAX_CHUNKS_TOTAL:
                raise ValueError(f"disk {disk.target}: {count} chunks of {self.chunk_size} bytes, more than the "
                                 f"{MAX_CHUNKS_PER_DISK} a disk (or {MAX_CHUNKS_TOTAL} a backup) may have")
            if len(disk.chunks) > count:
                raise ValueError(f"disk {disk.target} lists {len(disk.chunks)} chunks; {count} fit its size")
            indexes = [i for i, _ in disk.chunks]
            if indexes and max(indexes) >= count:
                raise ValueError(f"disk {disk.target}: chunk {max(indexes)} is past its end ({count} chunks)")
            if len(set(indexes)) != len(indexes):
                raise ValueError(f"disk {disk.target}: a chunk index is listed twice")
            if disk.full and any(d is None for _, d in disk.chunks):
                raise ValueError(f"disk {disk.target}: a full record lists a zero chunk")
        return self

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


class DamagedManifest(BaseModel):
    """A manifest that did not parse: listed, never used, never a reason to fail other VMs' backups."""
    key: str
    problem: str


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
    # per "SNAP:vda": "match" | "mismatch" | "absent" (a format-1 manifest recorded no content digest)
    content: dict[str, str] = {}
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged and "mismatch" not in self.content.values()
