"""Backing a snapshot up: every disk read chunk by chunk (holes and unallocated extents skipped), each chunk
named by its block tree (codec.chunk_id), compressed and stored once; a manifest per backup, written last, makes
it good.

Incremental against the newest earlier backup of the same VM on the target, reading only what changed:
    fiemap     a file disk whose parent snapshot file still exists, untouched, on the same filesystem: the two
               reflink snapshots' extent maps are compared (changes.py) and only the changed 4 KiB blocks read
    qcow2-map  a qcow2 file disk (CloudStack, Nova, virt-manager) whose parent snapshot file still exists,
               untouched: QEMU's allocation maps and the FIEMAP maps of the two containers give the changed guest
               ranges (qcow2_changes.py), read through the guest view
    rbd-diff   an RBD disk whose parent snapshot still exists: the chunks `diff_iterate` reports changed are read
               (any reader that declares TracksChanges is asked the same way)
    hashes     otherwise: every data chunk is read and hashed, and only those that differ are stored
A changed chunk is stored as a delta against the parent's chunk, computed from the parent's block digests kept in
the local block index (blockindex.py), so the parent is never fetched back from the target. Memory stays flat
whatever the disk size: `workers` chunks are read at once, each into its worker's reused buffer, and at most
`2 × workers` are queued.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from kvmkit.backup import changes, chunking, codec, digest, fiemap, leases
from kvmkit.backup.blockindex import index_path, open_index
from kvmkit.backup.chunk_work import ChunkWork
from kvmkit.backup.model import DEFAULT_CHUNK_SIZE, BackupManifest, ChangeMethod, DiskBackup
from kvmkit.backup.store import ChunkStore
from kvmkit.backup.targets import compression_of, open_target
from kvmkit.config import Settings
from kvmkit.errors import Conflict, InvalidInput, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.joblog import job_log
from kvmkit.snapshot import snapshot_lock
from kvmkit.snapshot.drivers.base import StorageDriver
from kvmkit.snapshot.drivers.reading import (
    FileReader,
    GuestViewReader,
    SnapshotReader,
    TracksChanges,
    file_identity,
    raw_file,
)
from kvmkit.snapshot.drivers.registry import by_name, named_drivers
from kvmkit.snapshot.model import DiskSnapshot, Snapshot, State

log = logging.getLogger(__name__)
Advance = Callable[[int], None]  # progress: bytes examined
MAX_CHAIN = 32  # after this many incrementals the next backup is full again (cheap: dedup skips known chunks)
# One worker per core: sha256, zstd and the reads release the GIL, so two workers keep two cores busy; more only
# add GIL hand-offs and moves between cores (1 GiB to tmpfs, medians of 5 on the shared 2-core machine: 0.61 s
# with 2 workers, 1.20 s with 4 from an ext4 source; 0.75 / 0.75 / 0.85 s with 2 / 3 / 4 from the lab's XFS pool).
WORKERS = max(2, len(os.sched_getaffinity(0)))
# Reading only changed 4 KiB blocks is random I/O that waits on the disk, not the CPU: more reads in flight pay
# (1 GiB image, 2 % scattered, cold cache, loop XFS: incremental 3.05 s with 2 workers, 1.65 s with 8, 1.56 s
# with 16; CPU ~1.1 s in all three).
BLOCK_WORKERS = 8


def backup_snapshot(settings: Settings, snapshot: Snapshot, target_name: str | None = None,
                    advance: Advance = lambda _n: None) -> BackupManifest:
    """Back a ready snapshot up to a target (the configured one if there is only one). The hook for
    `backup_to_secondary = true`: call it after the snapshot is `ready`, outside any freeze."""
    with job_log(settings.state_dir, "backup", snapshot.vm, f"backup create {snapshot.name}"):
        target = open_target(settings, target_name)
        with snapshot_lock.reading(settings.state_dir, snapshot.vm_uuid, snapshot.name, snapshot.vm):
            return Backup(settings, target, compression_of(settings, target.name), advance).run(snapshot)


def plan_bytes(snapshot: Snapshot) -> int:
    """What a progress bar can use as its total before reading starts: the provisioned disk sizes."""
    return sum(d.size_bytes for d in snapshot.disks)


def pick_parent(manifests: list[BackupManifest], snapshot: Snapshot) -> BackupManifest | None:
    """Newest good backup of the VM taken before this snapshot, unless its chain is already MAX_CHAIN long."""
    earlier = [m for m in manifests if m.snapshot_created < snapshot.created and m.snapshot != snapshot.name]
    if not earlier:
        return None
    parent = earlier[-1]
    by_name = {m.snapshot: m for m in manifests}
    try:
        depth = len(chunking.chain(parent, by_name))
    except InvalidInput:
        return None
    return None if depth >= MAX_CHAIN else parent


class Backup:
    def __init__(self, settings: Settings, target: ChunkStore, compression: str, advance: Advance,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, workers: int = WORKERS,
                 drivers: list[StorageDriver] | None = None) -> None:
        """drivers: the storage drivers that read the snapshot's disks (a fresh default set, closed at the end
        of the run, when None)."""
        self.settings, self.target, self.compression = settings, target, compression
        self.advance, self.chunk_size, self.workers = advance, chunk_size, workers
        self._given_drivers = drivers
        self._drivers: list[StorageDriver] = []

    def run(self, snapshot: Snapshot) -> BackupManifest:
        if snapshot.state is not State.READY:
            raise Conflict(f"snapshot {snapshot.name} of VM {snapshot.vm} is {snapshot.state.value}, not ready")
        if not snapshot.disks:
            raise InvalidInput(f"snapshot {snapshot.name} of VM {snapshot.vm} has no disks")
        t0 = time.perf_counter()
        with self.target.locked(exclusive=False), ExitStack() as stack:
            # announced before any chunk is looked at (leases.py, gc.py): other hosts' GC and prunes see it
            lease = stack.enter_context(leases.Lease(self.target, snapshot.vm_uuid, snapshot.name))
            stack.enter_context(self.target.folder_cache())
            self.target.reused, self.target.last_touch = set(), 0.0
            stack.callback(setattr, self.target, "reused", None)
            if self.target.has_manifest(snapshot.vm_uuid, snapshot.name):
                raise Conflict(f"snapshot {snapshot.name} of VM {snapshot.vm} is already backed up on target "
                               f"{self.target.name}")
            manifests = self.target.manifests(snapshot.vm_uuid)
            parent = pick_parent(manifests, snapshot)
            if parent is not None:
                lease.name_parent(parent.snapshot)
                if not self.target.has_manifest(snapshot.vm_uuid, parent.snapshot):  # pruned before it was named
                    manifests = [m for m in manifests if m.snapshot != parent.snapshot]
                    parent = pick_parent(manifests, snapshot)
                    lease.name_parent(parent.snapshot if parent is not None else None)
            chain = chunking.chain(parent, {m.snapshot: m for m in manifests}) if parent else []
            self._drivers = self._given_drivers or named_drivers(self.settings, {d.driver for d in snapshot.disks})
            if self._given_drivers is None:
                for driver in self._drivers:
                    stack.callback(driver.close)
            self.target.mark_incomplete(snapshot.vm, snapshot.vm_uuid, snapshot.name)
            disks = [self._disk(disk, chain, snapshot.vm_uuid) for disk in snapshot.disks]
            manifest = BackupManifest(
                vm=snapshot.vm, vm_uuid=snapshot.vm_uuid, snapshot=snapshot.name, snapshot_created=snapshot.created,
                created=datetime.now(), parent=parent.snapshot if parent and not all(d.full for d in disks) else None,
                host=leases.host_id(),
                target=self.target.name, chunk_size=self.chunk_size, compression=self.compression, disks=disks,
                seconds=round(time.perf_counter() - t0, 3))
            failpoint("backup-before-manifest")
            self._final_check(manifest)
            self.target.write_manifest(manifest)
            self.target.clear_incomplete(snapshot.vm_uuid, snapshot.name)
        log.info("backup written", extra={"vm": snapshot.vm, "snapshot": snapshot.name, "kind": manifest.kind.value,
                                          "written_bytes": manifest.written_bytes})
        return manifest

    def _final_check(self, manifest: BackupManifest) -> None:
        """What this backup relied on is still there (reused chunks, SETTLE after the last touch; the parent):
        else it is not recorded (a rerun stores what went missing), never recorded with a hole."""
        missing = self.target.missing_reused()
        if manifest.parent is not None and not self.target.has_manifest(manifest.vm_uuid, manifest.parent):
            missing.append(f"parent backup {manifest.parent}")
        if missing:
            raise OperationFailed(f"backup {manifest.snapshot} of VM {manifest.vm}: {len(missing)} thing(s) it "
                                  f"relied on went missing meanwhile (first: {missing[0]}); it is not recorded, "
                                  "run it again")

    def _reader(self, disk: DiskSnapshot) -> SnapshotReader:
        """The snapshot as its guest sees it, through the driver that made it (which knows how to reach it)."""
        try:
            driver = by_name(disk.driver, self._drivers)
        except InvalidInput:
            raise InvalidInput(f"disk {disk.target}: no storage driver {disk.driver!r} here to read its snapshot "
                               "(for RBD: apt-get install python3-rbd)") from None
        return driver.open_reader(disk)

    def _own_handle(self, disk: DiskSnapshot, parent: DiskBackup, parent_snapshot: str) -> bool:
        """The parent record's handle is exactly what this disk's driver names its snapshot `parent_snapshot`
        (same driver, same source): the only base an incremental asks the storage about."""
        if parent.driver != disk.driver or parent.source != disk.source \
                or not parent.handle.startswith(f"{disk.source}@"):
            return False
        try:
            return by_name(disk.driver, self._drivers).tag_of(parent.handle) == parent_snapshot
        except InvalidInput:
            return False

    def _disk(self, disk: DiskSnapshot, chain: list[BackupManifest], vm_uuid: str) -> DiskBackup:
        reader = self._reader(disk)
        index = open_index(index_path(self.settings.state_dir, self.target.name, self.target.location, vm_uuid,
                                      disk.target), self.chunk_size, self.target.id_key)
        stack = ExitStack()  # the parent snapshot, open while its extent map streams
        try:
            size, parent_record, parent_map = reader.size, None, {}
            if chain and (prev := chain[0].disk(disk.target)) is not None and prev.size_bytes == size \
                    and chain[0].chunk_size == self.chunk_size:
                parent_record, parent_map = chunking.resolve(disk.target, chain)
                if not _parent_intact(parent_record, parent_map, size, self.chunk_size, chain[0].snapshot):
                    parent_record, parent_map = None, {}
            record = DiskBackup(target=disk.target, driver=disk.driver, source=disk.source, handle=disk.handle,
                                size_bytes=size, full=parent_record is None,
                                format="qcow2" if disk.format == "qcow2" else "raw",
                                handle_identity=_identity(reader))
            work: Iterable[tuple[int, list[int] | None]]
            # a change map is asked of the storage only about the parent's own snapshot, by the name the driver
            # gives it: a manifest cannot point the reader at another file, a FIFO, or a later snapshot
            base = parent_record if parent_record is not None and self._own_handle(disk, parent_record,
                                                                                  chain[0].snapshot) else None
            changed = _tracked_changes(disk, base, reader)
            method, ranges = None, None
            if base is not None and changed is None:
                method, ranges = ChangeMethod.FIEMAP, _fiemap_changes(reader, base, stack)
                if ranges is None:
                    method, ranges = ChangeMethod.QCOW2_MAP, _qcow2_changes(reader, base)
            if changed is not None:
                record.change_method = ChangeMethod(reader.change_method)  # type: ignore[attr-defined]
                record.diff_bytes = chunking.extents_length(changed)
                work = changes.chunk_blocks(changed, size, self.chunk_size, codec.DELTA_BLOCK) \
                    if isinstance(reader, FileReader) else \
                    ((i, None) for i in chunking.touched_chunks(changed, size, self.chunk_size))
            elif ranges is not None:
                record.change_method, record.diff_bytes = method, 0
                work = changes.chunk_blocks(_counted(ranges, record), size, self.chunk_size, codec.DELTA_BLOCK)
            else:  # every chunk with data; chunks the parent had and that are now holes become zeros
                record.change_method = ChangeMethod.HASHES if parent_record is not None else ChangeMethod.FULL
                examine = chunking.touched_chunks(reader.data_extents(), size, self.chunk_size)
                work = ((i, None) for i in sorted(set(examine) | set(parent_map)))
            by_blocks = record.change_method in (ChangeMethod.FIEMAP, ChangeMethod.QCOW2_MAP, ChangeMethod.DIRTY_BITMAP)
            workers = max(self.workers, BLOCK_WORKERS) if by_blocks else self.workers
            hashes = ChunkWork(self, reader, index, size, parent_map, record).run(work, workers)
            record.chunks = ([(i, h) for i, h in sorted(hashes.items()) if h is not None] if record.full
                             else chunking.delta(parent_map, hashes, hashes))
            record.changed_bytes = sum(chunking.chunk_span(i, size, self.chunk_size)[1] for i, _ in record.chunks)
            whole = chunking.apply({} if record.full else parent_map, record.chunks)
            record.content_digest = digest.of_map(whole, size, self.chunk_size)
            self.advance(max(0, size - record.read_bytes))  # the bar counts skipped extents as done
            return record
        finally:
            stack.close()
            index.close()
            reader.close()


def _parent_intact(record: DiskBackup, chunk_map: chunking.ChunkMap, size: int, chunk_size: int,
                   snapshot: str) -> bool:
    """The parent's resolved chunk map is the content its backup read (its content digest): an edited parent is
    never carried into the next backup under a fresh, valid digest. A legacy parent without a digest is taken
    as it is (its repository has no keys to protect it either)."""
    if record.content_digest is None:
        return True
    if digest.of_map(chunk_map, size, chunk_size) == record.content_digest:
        return True
    log.warning("parent backup %s: disk %s's chunk map does not match its content digest (edited?): this "
                "backup is full; `kvmkit backup verify` names the damage", snapshot, record.target)
    return False


def _identity(reader: SnapshotReader) -> str | None:
    """The snapshot file as it was read (a qcow2's container, not its guest view), for the next backup's map
    comparison; None for what is not a regular file kvmkit reads directly or through its guest view."""
    if isinstance(reader, GuestViewReader):
        return _identity_at(reader.source)
    return reader.identity() if raw_file(reader) else None  # type: ignore[attr-defined]


def _open_regular(path: str | Path) -> int | None:
    """An fd of the regular file at path: never through a symlink, never waiting on a FIFO (O_NONBLOCK), never
    a device (fstat before any read); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _identity_at(path: str | Path) -> str | None:
    """file_identity of the regular file at path (_open_regular); None if it cannot be opened."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        return file_identity(fd)
    finally:
        os.close(fd)


def _qcow2_changes(reader: SnapshotReader, parent: DiskBackup) -> Iterator[changes.Extent] | None:
    """Changed guest ranges of a qcow2 disk from its two reflink snapshots' allocation and extent maps
    (qcow2_changes.py), when the parent was a qcow2 snapshot file still there, untouched since it was read."""
    if not isinstance(reader, GuestViewReader) or reader.fmt != "qcow2" or parent.driver != "file" \
            or parent.format != "qcow2" or parent.handle_identity is None \
            or _identity_at(parent.handle) != parent.handle_identity:
        return None
    from kvmkit.backup import qcow2_changes  # NumPy: ~130 ms of start-up that only qcow2 incrementals need

    return qcow2_changes.changed_guest_ranges(Path(parent.handle), reader.source, "qcow2")


def _fiemap_changes(reader: SnapshotReader, parent: DiskBackup, stack: ExitStack) -> Iterator[changes.Extent] | None:
    """Changed byte ranges from the two snapshots' extent maps, streamed, or None when they cannot be trusted:
    the parent's snapshot file is gone, was replaced or touched since it was read (identity differs), lies on
    another filesystem, the filesystem has no FIEMAP, or the new snapshot shares no extent (not a reflink
    sibling: two ext4 copies share nothing, and the maps would only say "all changed")."""
    if not raw_file(reader) or parent.driver != "file" or parent.handle_identity is None:
        return None
    fd = _open_regular(parent.handle)
    if fd is None:
        return None
    stack.callback(os.close, fd)
    try:
        if file_identity(fd) != parent.handle_identity or os.fstat(fd).st_dev != os.fstat(reader.fd).st_dev:
            return None
        # a clone shares its data extents with its source (those the VM has not rewritten since): one shared
        # extent among the first page of the map says this is a reflink snapshot
        if not any(e.flags & fiemap.SHARED
                   for e in itertools.islice(fiemap.iter_extent_map(reader.fd, reader.size), fiemap.SLOTS)):
            return None
        old_size = os.fstat(fd).st_size
    except OSError:
        return None
    return changes.iter_changed_ranges(fiemap.iter_extent_map(fd, old_size),
                                       fiemap.iter_extent_map(reader.fd, reader.size), old_size, reader.size)


def _counted(ranges: Iterator[changes.Extent], record: DiskBackup) -> Iterator[changes.Extent]:
    """Pass the ranges through, adding their length to the record's diff_bytes (they are streamed once)."""
    for offset, length in ranges:
        record.diff_bytes = (record.diff_bytes or 0) + length
        yield offset, length


def _tracked_changes(disk: DiskSnapshot, parent: DiskBackup | None,
                     reader: SnapshotReader) -> list[tuple[int, int]] | None:
    """What the storage itself says changed since the parent's snapshot (RBD diff_iterate, a qcow2 snapshot's
    maps), when the parent was read from the same driver and the reader can tell; else None."""
    if parent is None or parent.driver != disk.driver or not isinstance(reader, TracksChanges):
        return None
    return reader.changed_since(parent.handle)
