"""Restore and verify: every chunk read back is decoded and hashed before it is used.

Restore builds each disk beside its destination and renames them in only after every disk was rebuilt from
verified chunks; a missing or damaged chunk stops it with an error naming the chunk and every disk that needs
it, and removes what was half-built, so a restore never leaves a silently wrong disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path

from pydantic import BaseModel

from kvmkit.backup import chunking
from kvmkit.backup import digest as content_digest
from kvmkit.backup.codec import ChunkDamaged
from kvmkit.backup.model import BackupManifest, DamagedChunk, DiskBackup, VerifyReport
from kvmkit.backup.sources import Ceph, DiskWriter, FileWriter, RbdWriter
from kvmkit.backup.store import ChunkStore
from kvmkit.backup.targets import open_target
from kvmkit.config import Settings
from kvmkit.errors import InvalidInput, NotFound, OperationFailed

Advance = Callable[[int], None]
WORKERS = 3


def vm_manifests(target: ChunkStore, vm: str, manifests: list[BackupManifest] | None = None) -> list[BackupManifest]:
    """A VM's backups by name or UUID; works after the VM itself is gone (the manifests carry both)."""
    found = [m for m in (target.manifests() if manifests is None else manifests) if vm in (m.vm, m.vm_uuid)]
    uuids = sorted({m.vm_uuid for m in found})
    if len(uuids) > 1:
        raise InvalidInput(f"several VMs named {vm!r} have backups on {target.name} ({', '.join(uuids)}): "
                           "name the VM by UUID")
    if not found:
        raise NotFound(f"VM {vm} has no backups on target {target.name}")
    return found


def find_backup(target: ChunkStore, vm: str, snapshot: str) -> tuple[BackupManifest, list[BackupManifest]]:
    """The backup and its chain (newest first)."""
    manifests = vm_manifests(target, vm)
    by_name = {m.snapshot: m for m in manifests}
    if snapshot not in by_name:
        raise NotFound(f"VM {vm} has no backup of snapshot {snapshot!r} on target {target.name}")
    return by_name[snapshot], chunking.chain(by_name[snapshot], by_name)


class RestoredDisk(BaseModel):
    target: str
    destination: str
    size_bytes: int
    written_bytes: int


class RestoreResult(BaseModel):
    vm: str
    snapshot: str
    disks: list[RestoredDisk]
    seconds: float


def destinations(manifest: BackupManifest, to: list[str]) -> dict[str, str]:
    """--to DEST (one-disk backups), or --to vda=DEST per disk; unnamed disks go back to their source."""
    dests = {d.target: d.source for d in manifest.disks}
    for item in to:
        disk, sep, dest = item.partition("=")
        if not sep:
            if len(manifest.disks) != 1:
                raise InvalidInput(f"backup {manifest.snapshot} has {len(manifest.disks)} disks: use --to DISK=DEST "
                                   f"({', '.join(dests)})")
            disk, dest = manifest.disks[0].target, item
        if disk not in dests:
            raise InvalidInput(f"backup {manifest.snapshot} has no disk {disk!r} ({', '.join(dests)})")
        dests[disk] = dest
    return dests


def refuse_if_in_use(uri: str, manifest: BackupManifest, dests: set[str]) -> None:
    """A running VM that uses a destination would see its disk change under it: refuse. A VM that no longer
    exists, or a host where libvirt is not running (restore onto a fresh host), has nothing to protect."""
    import libvirt

    from kvmkit.errors import Conflict, EnvironmentProblem
    from kvmkit.virt.connection import connection, is_running, live_disks

    try:
        with connection(uri) as conn:
            try:
                dom = conn.lookupByUUIDString(manifest.vm_uuid)
            except libvirt.libvirtError:
                return
            busy = sorted(d.source for d in live_disks(dom) if d.source in dests) if is_running(dom) else []
    except EnvironmentProblem:
        return
    if busy:
        raise Conflict(f"VM {manifest.vm} is running and uses {', '.join(busy)}; shut it down first")


def restore(settings: Settings, vm: str, snapshot: str, target_name: str | None = None, to: list[str] | None = None,
            replace: bool = False, advance: Advance = lambda _n: None) -> RestoreResult:
    target = open_target(settings, target_name)
    manifest, chain = find_backup(target, vm, snapshot)
    dests = destinations(manifest, to or [])
    refuse_if_in_use(settings.libvirt_uri, manifest, set(dests.values()))
    maps = {d.target: chunking.resolve(d.target, chain)[1] for d in manifest.disks}
    for disk in manifest.disks:  # an edited chain is refused before anything is written
        if content_check(disk, maps[disk.target], manifest.chunk_size) == "mismatch":
            raise OperationFailed(f"backup {snapshot} of VM {manifest.vm}: disk {disk.target}'s chunk list does not "
                                  "match the content digest recorded at backup time (a manifest was edited); "
                                  "nothing was restored")
    t0 = time.perf_counter()
    with ExitStack() as stack:
        ceph = None
        if any(not dests[d.target].startswith("/") for d in manifest.disks):
            ceph = Ceph.connect(settings)
            stack.callback(ceph.close)
        writers: dict[str, DiskWriter] = {}
        try:
            for disk in manifest.disks:
                dest = dests[disk.target]
                if dest.startswith("/"):
                    writers[disk.target] = FileWriter(Path(dest), disk.size_bytes, replace)
                else:
                    assert ceph is not None
                    writers[disk.target] = RbdWriter(ceph, dest, disk.size_bytes, replace)
            written = {}
            for disk in manifest.disks:
                written[disk.target] = _rebuild(target, manifest, disk.target, maps, writers[disk.target], advance)
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        done = [RestoredDisk(target=d.target, destination=writers[d.target].commit(), size_bytes=d.size_bytes,
                             written_bytes=written[d.target]) for d in manifest.disks]
    return RestoreResult(vm=manifest.vm, snapshot=snapshot, disks=done, seconds=round(time.perf_counter() - t0, 3))


def _rebuild(target: ChunkStore, manifest: BackupManifest, disk: str, maps: dict[str, chunking.ChunkMap],
             writer: DiskWriter, advance: Advance) -> int:
    size = manifest.disk(disk).size_bytes  # type: ignore[union-attr]
    chunk_map = maps[disk]

    def one(index: int, digest: str) -> int:
        offset, length = chunking.chunk_span(index, size, manifest.chunk_size)
        raw = target.get_chunk(digest)
        if len(raw) != length:
            raise ChunkDamaged(digest, f"holds {len(raw)} bytes where chunk {index} of {disk} has {length}")
        writer.write(offset, raw)
        return length

    written = 0
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="restore") as pool:
        pending: set[Future] = set()
        try:
            for index, digest in sorted(chunk_map.items()):
                if len(pending) >= 2 * WORKERS:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        written += future.result()
                        advance(manifest.chunk_size)
                pending.add(pool.submit(one, index, digest))
            for future in list(pending):
                written += future.result()
            pending = set()
        except ChunkDamaged as exc:
            wanted = {exc.digest, exc.needed_for}
            users = [f"{manifest.snapshot}:{name}" for name, cmap in maps.items() if wanted & set(cmap.values())]
            raise OperationFailed(f"chunk {exc.digest} is damaged ({exc.problem}); it is needed by disk(s) "
                                  f"{', '.join(users)}; nothing was restored") from None
        finally:
            for future in pending:
                future.cancel()
    advance(max(0, size - len(chunk_map) * manifest.chunk_size))
    return written


def verify(settings: Settings, vm: str, snapshot: str | None = None, target_name: str | None = None,
           advance: Advance = lambda _n: None) -> VerifyReport:
    """Check every chunk the backup(s) need (each once): present, decodable, hashing to its name."""
    target = open_target(settings, target_name)
    manifests = vm_manifests(target, vm)
    selected = [find_backup(target, vm, snapshot)[0]] if snapshot else manifests
    by_name = {m.snapshot: m for m in manifests}
    users: dict[str, list[str]] = {}
    content: dict[str, str] = {}
    for manifest in selected:
        chain = chunking.chain(manifest, by_name)
        for disk in manifest.disks:
            chunk_map = chunking.resolve(disk.target, chain)[1]
            content[f"{manifest.snapshot}:{disk.target}"] = content_check(disk, chunk_map, manifest.chunk_size)
            for digest in set(chunk_map.values()):
                users.setdefault(digest, []).append(f"{manifest.snapshot}:{disk.target}")
    t0 = time.perf_counter()
    damaged: list[DamagedChunk] = []
    checked_bytes = 0

    def one(digest: str) -> int:
        raw = target.get_chunk(digest)
        return len(raw)

    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="verify") as pool:
        for digest, future in zip(users, pool.map(_safe(one), users), strict=True):
            if isinstance(future, ChunkDamaged):  # a delta's damaged base is reported as itself
                found = next((d for d in damaged if d.chunk == future.digest), None)
                if found is None:
                    found = DamagedChunk(chunk=future.digest, problem=future.problem)
                    damaged.append(found)
                found.disks = sorted(set(found.disks) | set(users[digest]))
            else:
                checked_bytes += future
                advance(future)
    return VerifyReport(vm=manifests[0].vm, snapshots=[m.snapshot for m in selected], chunks_checked=len(users),
                        bytes_checked=checked_bytes, damaged=damaged, content=content,
                        seconds=round(time.perf_counter() - t0, 3))


def content_check(disk: DiskBackup, chunk_map: chunking.ChunkMap, chunk_size: int) -> str:
    """"match" when the chunks, in their places, are the content the backup read; "mismatch" when a manifest
    in the chain was edited (swapped, dropped or added chunk ids); "absent" for a format-1 manifest. Each chunk's
    own bytes are checked against its id when it is read, so a match here pins every byte of the disk."""
    if disk.content_digest is None:
        return "absent"
    return "match" if content_digest.of_map(chunk_map, disk.size_bytes, chunk_size) == disk.content_digest \
        else "mismatch"


def _safe(fn: Callable[[str], int]) -> Callable[[str], int | ChunkDamaged]:
    def wrapped(digest: str) -> int | ChunkDamaged:
        try:
            return fn(digest)
        except ChunkDamaged as exc:
            return exc
    return wrapped
