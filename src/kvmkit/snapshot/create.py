"""Create: one VM at a time under its lock, every step journaled.

  lock(vm) → plan every disk (drivers name their handles; nothing touched) → catalog row `creating` (the intent)
  → watchdog armed → freeze (or pause) → every disk snapshotted concurrently → thaw (always) → `ready`.
Any failure after the intent deletes what was made and removes the row; a crash leaves the row for `recover`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, KvmkitError, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.joblog import job_log
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.drivers.base import BarrierSnapshots, GroupSnapshots, PlanOptions, StorageDriver
from kvmkit.snapshot.drivers.registry import driver_for
from kvmkit.snapshot.guard import WatchdogHandle, vm_lock
from kvmkit.snapshot.journal import OverlayDisk, OverlayJournal
from kvmkit.snapshot.lifecycle import discard
from kvmkit.snapshot.model import DiskSnapshot, Method, Mode, Snapshot, State, check_snapshot_name, default_name
from kvmkit.virt import agent
from kvmkit.virt.connection import Domain, connection, is_running, live_disks, lookup, pause, resume
from kvmkit.virt.disks import Disk
from kvmkit.virt.host import require_local

log = logging.getLogger(__name__)


def create(ctx: SnapshotContext, vm: str, name: str | None = None, *, crash_consistent: bool = False,
           wait_s: float = 0.0, allow_full_copy: bool = False) -> Snapshot:
    """Snapshot every disk of a running or shut-off VM (see the module docstring), logged as its own job."""
    with job_log(ctx.state_dir, "snapshot", vm, f"snapshot create {name or '(a default name)'}"):
        return _create(ctx, vm, name, crash_consistent=crash_consistent, wait_s=wait_s,
                       allow_full_copy=allow_full_copy)


def _create(ctx: SnapshotContext, vm: str, name: str | None = None, *, crash_consistent: bool = False,
           wait_s: float = 0.0, allow_full_copy: bool = False) -> Snapshot:
    name = check_snapshot_name(name) if name is not None else default_name(ctx.clock())  # "" is refused
    t_start = time.perf_counter()
    with connection(ctx.uri) as conn:
        dom = lookup(conn, vm)
        vm_uuid = dom.UUIDString()
        with vm_lock(ctx.state_dir, vm_uuid, vm, wait_s):
            failpoint("after-lock")
            if ctx.catalog.find(vm_uuid, name) is not None:
                raise Conflict(f"VM {vm} already has a snapshot named {name!r}")
            disks = live_disks(dom)
            if not disks:
                raise InvalidInput(f"VM {vm} has no disk kvmkit can snapshot")
            require_local(conn, disks)  # file and block disks are paths on the domain's own host
            pairs = [(disk, driver_for(disk, ctx.drivers)) for disk in disks]
            try:
                options = PlanOptions(allow_full_copy=allow_full_copy, extent_limit=ctx.extent_limit,
                                      owner=ctx.catalog.catalog_id, vm_uuid=vm_uuid)
                return _create_locked(ctx, dom, vm, vm_uuid, name, pairs, crash_consistent, t_start, options)
            finally:
                for driver in {id(d): d for _, d in pairs}.values():
                    driver.release()


def _create_locked(ctx: SnapshotContext, dom: Domain, vm: str, vm_uuid: str, name: str,
                   pairs: list[tuple[Disk, StorageDriver]], crash_consistent: bool, t_start: float,
                   options: PlanOptions) -> Snapshot:
    mode = _mode(ctx, dom, pairs, crash_consistent)
    planned = [driver.plan(disk, name, options) for disk, driver in pairs]
    snap = ctx.catalog.insert(Snapshot(vm_uuid=vm_uuid, vm=vm, name=name, created=ctx.clock(), mode=mode,
                                       state=State.CREATING, disks=planned))
    failpoint("after-intent")
    try:
        taken = _take(ctx, dom, mode, pairs, planned, name)
    except BaseException as exc:
        try:
            cleaned = f"removed {discard(ctx, snap)} partial disk snapshot(s)"
        except KvmkitError as cleanup_exc:
            cleaned = f"cleanup incomplete ({cleanup_exc}); `kvmkit snapshot recover` will finish it"
        if isinstance(exc, KvmkitError):
            raise exc.rephrased(f"{exc} (guest thawed; {cleaned})") from exc
        raise
    snap.disks, snap.freeze_ms, snap.pause_ms = taken.disks, taken.freeze_ms, taken.pause_ms
    snap.storage_ms, snap.after_thaw_ms, snap.commit_ms = taken.storage_ms, taken.after_thaw_ms, taken.commit_ms
    snap.state = State.READY
    snap.total_ms = round((time.perf_counter() - t_start) * 1000, 1)
    ctx.catalog.update(snap)
    log.info("snapshot created", extra={"vm": vm, "snapshot": name, "mode": mode.value,
                                        "freeze_ms": snap.freeze_ms})
    return snap


def _mode(ctx: SnapshotContext, dom: Domain, pairs: list[tuple[Disk, StorageDriver]], crash: bool) -> Mode:
    if not is_running(dom):
        return Mode.OFFLINE
    if crash:
        drivers = {driver.name for _, driver in pairs}
        driver = pairs[0][1]
        if (len(drivers) == 1 and isinstance(driver, GroupSnapshots)
                and driver.serves_as_group([d for d, _ in pairs])):
            return Mode.GROUP
        return Mode.CRASH
    if not ctx.guest.ping(dom):
        raise EnvironmentProblem(f"VM {dom.name()}: no guest agent answers, so its filesystems cannot be "
                                 f"frozen; {agent.NO_AGENT_HINT}")
    return Mode.QUIESCED


@dataclass
class _Taken:
    disks: list[DiskSnapshot]
    freeze_ms: float | None = None
    pause_ms: float | None = None
    storage_ms: float | None = None
    after_thaw_ms: float | None = None
    commit_ms: float | None = None


def _take(ctx: SnapshotContext, dom: Domain, mode: Mode, pairs: list[tuple[Disk, StorageDriver]],
          planned: list[DiskSnapshot], name: str) -> _Taken:
    drivers = [driver for _, driver in pairs]
    if mode is Mode.GROUP:
        group_driver = drivers[0]
        assert isinstance(group_driver, GroupSnapshots)
        t0 = time.perf_counter()
        disks = group_driver.group_snapshot(planned, f"{dom.name()}-{dom.UUIDString()[:8]}", name)
        return _Taken(disks, freeze_ms=0.0, storage_ms=_ms_since(t0))
    if mode is Mode.OFFLINE:
        t0 = time.perf_counter()
        disks = _snapshot_all(drivers, planned)
        return _Taken(disks, storage_ms=_ms_since(t0))
    stop: Callable[[], object]
    start: Callable[[], object]
    if mode is Mode.QUIESCED:
        stop, start, action = (lambda: ctx.guest.freeze(dom)), (lambda: ctx.guest.thaw(dom)), "thaw"
    else:
        stop, start, action = (lambda: pause(dom)), (lambda: resume(dom)), "resume"
    direct = [(d, p) for d, p in zip(drivers, planned, strict=True) if p.method is Method.DIRECT]
    barriered = [(disk, d, p) for (disk, d), p in zip(pairs, planned, strict=True) if p.method is Method.BARRIER]
    watchdog = ctx.watchdog(ctx.uri, dom.UUIDString(), ctx.freeze_timeout_s, action,  # boots while we prepare
                            ctx.state_dir / "log" / "watchdog.log", (ctx.state_dir, ctx.catalog.path))
    entry = None
    barrier = None
    if barriered:
        bdisks = [disk for disk, _, _ in barriered]
        entry = ctx.catalog.journal_add(dom.UUIDString(), OverlayJournal(
            tag=name, mode=ctx.overlay_barrier,
            disks=[OverlayDisk(target=d.target, source=d.source, format=d.format) for d in bdisks]))
        try:
            barrier = _prepare_barrier(ctx, dom, bdisks, name)
        except BaseException:
            watchdog.cancel()
            _commit_back(ctx, dom, bdisks, name)  # nothing is on an overlay yet: this only tidies up
            ctx.catalog.journal_done(entry)
            raise
    try:  # with overlays, the watchdog stays on guard after the thaw: if we die, it merges them back
        window_ms, storage_ms, done = _quiet_window(watchdog, stop, start, [d for d, _ in direct],
                                                    [p for _, p in direct], ctx.sequential, barrier)
    except BaseException:
        try:
            if barriered:  # the VM may already write to overlays: merge them back before reporting the failure
                _commit_back(ctx, dom, [disk for disk, _, _ in barriered], name)
                if entry is not None:
                    ctx.catalog.journal_done(entry)
        finally:
            watchdog.release()
        raise
    failpoint("after-thaw")
    after_ms = commit_ms = None
    if barriered:
        t_after = time.perf_counter()
        try:
            made, commit_ms = _complete_overlays(ctx, dom, barriered, name, entry)
        finally:
            watchdog.release()
        done += made
        after_ms = _ms_since(t_after)
    order = {p.target: i for i, p in enumerate(planned)}
    disks = sorted(done, key=lambda p: order[p.target])
    if mode is Mode.QUIESCED:
        return _Taken(disks, freeze_ms=window_ms, storage_ms=storage_ms, after_thaw_ms=after_ms, commit_ms=commit_ms)
    return _Taken(disks, pause_ms=window_ms, storage_ms=storage_ms, after_thaw_ms=after_ms, commit_ms=commit_ms)


def _barrier_drivers(ctx: SnapshotContext, disks: list[Disk]) -> list[tuple[BarrierSnapshots, list[Disk]]]:
    """The drivers that planned these disks Method.BARRIER, each with its disks (only such drivers do)."""
    by_driver: dict[int, tuple[BarrierSnapshots, list[Disk]]] = {}
    for disk in disks:
        driver = driver_for(disk, ctx.drivers)
        if not isinstance(driver, BarrierSnapshots):
            raise OperationFailed(f"disk {disk.target}: planned behind a barrier by a driver without one")
        by_driver.setdefault(id(driver), (driver, []))[1].append(disk)
    return list(by_driver.values())


def _prepare_barrier(ctx: SnapshotContext, dom: Domain, disks: list[Disk], tag: str) -> Callable[[], None]:
    """Everything the barrier needs, made before the freeze (by the disks' driver); returns the one call the
    freeze holds."""
    calls = [driver.prepare_barrier(dom, own, tag, ctx.overlay_barrier) for driver, own in
             _barrier_drivers(ctx, disks)]
    if len(calls) == 1:
        return calls[0]

    def every_barrier() -> None:
        for call in calls:
            call()

    return every_barrier


def _commit_back(ctx: SnapshotContext, dom: Domain, disks: list[Disk], tag: str) -> None:
    for driver, own in _barrier_drivers(ctx, disks):
        driver.finish_barrier(dom.connect(), dom, own, tag, ctx.overlay_barrier)


def _complete_overlays(ctx: SnapshotContext, dom: Domain,
                       barriered: list[tuple[Disk, StorageDriver, DiskSnapshot]], tag: str,
                       entry: int | None) -> tuple[list[DiskSnapshot], float]:
    """After the thaw: clone (or copy) the quiet base files, then commit the overlays back — in every path.
    Returns the disk snapshots and how long the commit alone took (ms)."""
    try:
        made = _snapshot_all([d for _, d, _ in barriered], [p for _, _, p in barriered])
        failpoint("overlay-before-commit")
    finally:
        t_commit = time.perf_counter()
        _commit_back(ctx, dom, [disk for disk, _, _ in barriered], tag)
        commit_ms = _ms_since(t_commit)
        if entry is not None:
            ctx.catalog.journal_done(entry)
    return made, commit_ms


def _snapshot_all(drivers: list[StorageDriver], planned: list[DiskSnapshot],
                  pool: ThreadPoolExecutor | None = None,
                  alongside: Callable[[], None] | None = None) -> list[DiskSnapshot]:
    """Every disk at once: the window is the slowest disk, not the sum. All finish before any error is raised."""
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=max(1, len(planned)))
    try:
        futures = [pool.submit(_one, driver, disk_snap, i) for i, (driver, disk_snap) in
                   enumerate(zip(drivers, planned, strict=True))]
        results, errors = [], []
        if alongside is not None:  # the overlay barrier runs on this thread while the pool clones the rest
            try:
                alongside()
            except Exception as exc:
                errors.append(exc)
        for fut in futures:
            try:
                results.append(fut.result())
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return results
    finally:
        if own:
            pool.shutdown()


def _one(driver: StorageDriver, disk_snap: DiskSnapshot, index: int) -> DiskSnapshot:
    result = driver.snapshot(disk_snap)
    if index == 0:
        failpoint("mid-snapshot")
    return result


def _quiet_window(watchdog: WatchdogHandle, stop: Callable[[], object], start: Callable[[], object],
                  drivers: list[StorageDriver], planned: list[DiskSnapshot], sequential: bool = False,
                  barrier: Callable[[], None] | None = None) -> tuple[float, float, list[DiskSnapshot]]:
    """Freeze (or pause), snapshot all, thaw (or resume) — in every path; time the window and the storage part.
    With a barrier the watchdog is left on guard (disarm(guard=True)) and the caller releases it."""
    pool = _warm_pool(len(planned))
    try:
        watchdog.arm()
        t0 = time.perf_counter()
        try:
            stop()
            failpoint("after-freeze")
            t_storage = time.perf_counter()
            if sequential:
                disks = [_one(d, p, i) for i, (d, p) in enumerate(zip(drivers, planned, strict=True))]
            else:
                disks = _snapshot_all(drivers, planned, pool, alongside=barrier)
            storage_ms = _ms_since(t_storage)
        finally:
            try:
                start()
            except BaseException:
                watchdog.abandon()  # it retries the thaw on its own
                raise
            window_ms = round((time.perf_counter() - t0) * 1000, 2)
            in_time = watchdog.disarm(guard=barrier is not None)
    finally:
        pool.shutdown()
    if not in_time:
        raise OperationFailed(f"the snapshot outlasted the {watchdog.deadline_s:g} s freeze deadline; the watchdog "
                              "thawed the guest first, so the snapshot was discarded")
    return window_ms, storage_ms, disks


def _warm_pool(workers: int) -> ThreadPoolExecutor:
    """A pool whose threads already exist: spawning them inside the freeze would lengthen the window."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    barrier = threading.Barrier(max(1, workers))
    for fut in [pool.submit(barrier.wait) for _ in range(max(1, workers))]:
        fut.result()
    return pool


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)
