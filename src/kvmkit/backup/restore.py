"""Restore and verify: the wiring. Every chunk read back is decoded and hashed before it is used.

Restore: find the backup and its chain (store), resolve and check every destination (restore_targets: no disk
of a defined VM, temp files O_EXCL beside their destination), refuse an edited chain from its content digest
before writing anything, write each disk (restore_writer: each chunk decoded once, in parallel, holes kept), check
the written content's digest, then swap every disk in at once. A missing or damaged chunk stops it with an error
naming the chunk and every disk that needs it, and removes what was half-built: never a silently wrong disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from pydantic import BaseModel

from kvmkit.backup import chunking, image_format, restore_guard, restore_writer
from kvmkit.backup import digest as content_digest
from kvmkit.backup import restore_targets as targets
from kvmkit.backup.codec import ChunkDamaged
from kvmkit.backup.model import BackupManifest, DamagedChunk, DiskBackup, VerifyReport
from kvmkit.backup.scan import find_backup, scan_vm, vm_manifests  # noqa: F401 (restore's callers name them here)
from kvmkit.backup.store import ChunkStore
from kvmkit.backup.targets import open_target
from kvmkit.config import Settings
from kvmkit.errors import EnvironmentProblem, InvalidInput, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.joblog import job_log
from kvmkit.snapshot.drivers.rbd import RbdDriver
from kvmkit.snapshot.drivers.rbd_io import RbdWriter

Advance = Callable[[int], None]
WORKERS = 3


class RestoredDisk(BaseModel):
    target: str
    destination: str
    format: str = "raw"
    size_bytes: int
    written_bytes: int


class RestoreResult(BaseModel):
    vm: str
    snapshot: str
    disks: list[RestoredDisk]
    seconds: float


def destinations(manifest: BackupManifest, to: list[str]) -> dict[str, str]:
    """--to DEST (one-disk backups), or --to vda=DEST per disk; unnamed disks go back to their source (which the
    manifest says, so it is checked exactly like a --to)."""
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


def output_formats(manifest: BackupManifest, dests: list[targets.Destination], fmt: str | None,
                   domain_disks: list[targets.DomainDisk] | None = None) -> dict[str, str]:
    """Each disk's format on its way out. RBD images and block devices hold the guest's bytes as they are (raw).
    A file takes `fmt` when given; else a disk going back to its own place gets the format its domain gives it
    now (a CloudStack qcow2 root stays qcow2, now self-contained) — never the repository's word alone: a
    manifest must not choose how QEMU reads a file (a raw disk whose bytes carry a qcow2 header naming a backing
    file). When the domain and the manifest disagree, it is refused. Any other file is raw."""
    if fmt is not None and fmt not in image_format.FORMATS:
        raise InvalidInput(f"--format {fmt!r}: kvmkit restores files as raw or qcow2")
    out = {}
    by_disk = {d.disk: d for d in dests}
    for disk in manifest.disks:
        dest = by_disk[disk.target]
        own = dest.path is not None and os.path.realpath(disk.source) == str(dest.path)
        if dest.kind != "file" or fmt is not None or not own:
            out[disk.target] = "raw" if dest.kind != "file" else fmt or "raw"
            continue
        domain = {d.format for d in domain_disks or [] if targets._same(dest, d.source)}
        if not domain:  # no domain here reads that file: it is a file like any other
            out[disk.target] = "raw"
            continue
        if len(domain) != 1 or None in domain:
            raise InvalidInput(f"disk {disk.target} goes back to {dest.given}, which domains here read in different "
                               "formats: name it with --format raw|qcow2")
        said = domain.pop()
        if said != disk.format or said not in image_format.FORMATS:
            raise InvalidInput(f"disk {disk.target}: the domain reads {dest.given} as {said}, the backup says "
                               f"{disk.format}; refusing (name the format with --format if you mean it)")
        out[disk.target] = said
    return out


def restore(settings: Settings, vm: str, snapshot: str, target_name: str | None = None, to: list[str] | None = None,
            replace: bool = False, advance: Advance = lambda _n: None, force_offline: bool = False,
            fmt: str | None = None) -> RestoreResult:
    """Rebuild every disk of a backup: checked targets, staged, verified, then swapped in all at once.
    fmt: raw or qcow2 for every file destination (None: a disk going back to its own place keeps its format)."""
    target = open_target(settings, target_name)
    manifest, chain = find_backup(target, vm, snapshot)
    with job_log(settings.state_dir, "restore", manifest.vm, f"backup restore {snapshot} from {target.name}"):
        return _restore(settings, target, manifest, chain, to, replace, advance, force_offline, fmt)


def _restore(settings: Settings, target: ChunkStore, manifest: BackupManifest, chain: list[BackupManifest],
             to: list[str] | None, replace: bool, advance: Advance, force_offline: bool,
             fmt: str | None) -> RestoreResult:
    snapshot = manifest.snapshot
    given = destinations(manifest, to or [])
    dests = [targets.resolve(disk, dest) for disk, dest in given.items()]
    domain_disks = targets.defined_disks(settings.libvirt_uri)
    resolved = [str(d.path or d.given) for d in dests]
    if len(set(resolved)) != len(resolved):
        raise InvalidInput(f"two disks of backup {snapshot} would be restored to one place ({', '.join(resolved)})")
    named = {item.partition("=")[0] if "=" in item else manifest.disks[0].target for item in to or []}
    targets.require_own_disks([d for d in dests if d.disk not in named], domain_disks, manifest.vm, manifest.vm_uuid)
    targets.refuse_domain_disks(dests, domain_disks, force_offline)
    formats = output_formats(manifest, dests, fmt, domain_disks)
    maps = {d.target: chunking.resolve(d.target, chain)[1] for d in manifest.disks}
    for disk in manifest.disks:  # an edited chain is refused before anything is written
        if content_check(disk, maps[disk.target], manifest.chunk_size) == "mismatch":
            raise OperationFailed(f"backup {snapshot} of VM {manifest.vm}: disk {disk.target}'s chunk list does not "
                                  "match the content digest recorded at backup time (a manifest was edited); "
                                  "nothing was restored")
    by_disk = {d.disk: d for d in dests}
    t0 = time.perf_counter()
    staged: list[targets.StagedFile] = []
    rbd_writers: list[RbdWriter] = []
    written: dict[str, int] = {}
    blocks = [d for d in manifest.disks if by_disk[d.target].kind == "block"]
    with ExitStack() as stack:
        rbd_driver = _rbd_driver(settings, domain_disks, stack) if any(d.kind == "rbd" for d in dests) else None
        try:
            for disk in [d for d in manifest.disks if d not in blocks]:  # staged first, block devices last
                dest = by_disk[disk.target]
                if dest.kind == "file" and formats[disk.target] == "qcow2":
                    item = targets.StagedFile(dest, replace, 0)
                    staged.append(item)
                    qcow2_fd = item.open()
                    with image_format.scratch_file(item.folder_fd, disk.size_bytes) as raw_fd:
                        written[disk.target] = _write(target, manifest, disk, maps,
                                                      restore_writer.FdSink(raw_fd, fresh=True), advance)
                        image_format.raw_to_qcow2(raw_fd, qcow2_fd, f"disk {disk.target}")
                    item.finish()
                    continue
                if dest.kind == "file":
                    item = targets.StagedFile(dest, replace, disk.size_bytes)
                    staged.append(item)
                    sink: restore_writer.Sink = restore_writer.FdSink(item.open(), fresh=True)
                else:
                    assert rbd_driver is not None
                    location = restore_guard.rbd_location(manifest.vm_uuid, dest.given.partition("/")[0],
                                                          domain_disks, rbd_driver._key)
                    rbd_writers.append(rbd_driver.open_writer(dest.given, disk.size_bytes, replace, location))
                    sink = restore_writer.RbdSink(rbd_writers[-1].image)
                written[disk.target] = _write(target, manifest, disk, maps, sink, advance)
                if dest.kind == "file":
                    staged[-1].finish()
            for disk in blocks:
                fd = targets.open_block(by_disk[disk.target], replace, disk.size_bytes)
                try:
                    written[disk.target] = _write(target, manifest, disk, maps,
                                                  restore_writer.FdSink(fd, fresh=False), advance)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            failpoint("restore-before-swap")
            targets.swap_all(staged)
        except BaseException:
            for writer in rbd_writers:
                writer.abort()
            raise
        finally:
            for item in staged:
                item.cleanup()
        for writer in rbd_writers:
            writer.commit()
    done = [RestoredDisk(target=d.target, destination=str(by_disk[d.target].path or by_disk[d.target].given),
                         format=formats[d.target], size_bytes=d.size_bytes, written_bytes=written[d.target])
            for d in manifest.disks]
    return RestoreResult(vm=manifest.vm, snapshot=snapshot, disks=done, seconds=round(time.perf_counter() - t0, 3))


def _rbd_driver(settings: Settings, domain_disks: list[targets.DomainDisk] | None, stack: ExitStack) -> RbdDriver:
    """The RBD driver, told every RBD disk the host's domains define: a restore into a pool reaches it as those
    disks do (their monitors, user and libvirt secret), else through kvmkit's [ceph] settings. Never through
    anything the backup repository says: it is untrusted, and a cluster it named would receive the disk."""
    from kvmkit.snapshot.drivers.registry import by_name, default_drivers

    drivers = default_drivers(settings)
    for driver in drivers:
        stack.callback(driver.close)
    try:
        rbd_driver = by_name("rbd", drivers)
    except InvalidInput:
        raise EnvironmentProblem("restoring to RBD needs python3-rbd (apt-get install python3-rbd)") from None
    assert isinstance(rbd_driver, RbdDriver)
    for known in domain_disks or []:
        if known.rbd is not None:
            rbd_driver.learn(known.rbd)
    return rbd_driver


def _write(target: ChunkStore, manifest: BackupManifest, disk: DiskBackup, maps: dict[str, chunking.ChunkMap],
           sink: restore_writer.Sink, advance: Advance) -> int:
    """One disk through the writer; a damaged chunk names every disk that needs it, a digest mismatch stops."""
    try:
        result = restore_writer.write_disk(target, maps[disk.target], disk.size_bytes, manifest.chunk_size, sink,
                                           advance)
    except ChunkDamaged as exc:
        wanted = {exc.digest, exc.needed_for}
        users = [f"{manifest.snapshot}:{name}" for name, cmap in maps.items() if wanted & set(cmap.values())]
        partly = " (block devices already written are partly overwritten)" if not sink.fresh else ""
        raise OperationFailed(f"chunk {exc.digest} is damaged ({exc.problem}); it is needed by disk(s) "
                              f"{', '.join(users) or disk.target}; nothing was restored{partly}") from None
    if disk.content_digest is not None and result.content_digest != disk.content_digest:
        raise OperationFailed(f"disk {disk.target} of backup {manifest.snapshot}: the restored content's digest "
                              "differs from the one recorded at backup time; nothing was replaced")
    return result.data_bytes


def verify(settings: Settings, vm: str, snapshot: str | None = None, target_name: str | None = None,
           advance: Advance = lambda _n: None) -> VerifyReport:
    """Check every chunk the backup(s) need (each once): present, decodable, hashing to its name."""
    target = open_target(settings, target_name)
    manifests, damaged_manifests = scan_vm(target, vm)
    if damaged_manifests:
        first = damaged_manifests[0]
        raise OperationFailed(f"{len(damaged_manifests)} damaged manifest(s) in backups of VM {vm}; first "
                              f"{first.key}: {first.problem}")
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
