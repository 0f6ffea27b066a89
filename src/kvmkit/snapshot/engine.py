"""The snapshot engine: create, delete and revert, one VM at a time under its lock, every step journaled.

Create, as data flows:
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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import libvirt

from kvmkit import config
from kvmkit.backup import snapshot_lock
from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, KvmkitError, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.snapshot import overlay
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.base import GroupSnapshots, PlanOptions, StorageDriver
from kvmkit.snapshot.drivers.registry import by_name, default_drivers, driver_for
from kvmkit.snapshot.guard import Watchdog, vm_lock
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State, check_snapshot_name, default_name
from kvmkit.virt import agent
from kvmkit.virt.connection import connection, is_running, live_disks, lookup
from kvmkit.virt.disks import Disk

log = logging.getLogger(__name__)


@dataclass
class Engine:
    uri: str
    state_dir: Path
    catalog: Catalog
    freeze_timeout_s: float = 10.0
    drivers: list[StorageDriver] = field(default_factory=default_drivers)
    sequential: bool = False  # benchmarks only: snapshot disks one after another, to show what concurrency buys
    extent_limit: int = 2048  # file disks with more extents get the O(1) overlay barrier instead (see overlay.py)
    overlay_barrier: str = "qmp"  # pre-opened overlay node, one QMP transaction in the freeze; or "libvirt"

    @classmethod
    def from_config(cls, uri: str | None = None) -> Engine:
        settings = config.load()
        return cls(uri=uri or settings.libvirt_uri, state_dir=settings.state_dir,
                   catalog=Catalog(settings.catalog_path), freeze_timeout_s=settings.freeze_timeout_s,
                   extent_limit=settings.reflink_extent_limit, overlay_barrier=settings.overlay_barrier)

    # create -----------------------------------------------------------------------------------------------
    def create(self, vm: str, name: str | None = None, *, crash_consistent: bool = False,
               wait_s: float = 0.0, allow_full_copy: bool = False) -> Snapshot:
        name = check_snapshot_name(name) if name is not None else default_name(datetime.now())
        t_start = time.perf_counter()
        with connection(self.uri) as conn:
            dom = lookup(conn, vm)
            vm_uuid = dom.UUIDString()
            with vm_lock(self.state_dir, vm_uuid, vm, wait_s):
                failpoint("after-lock")
                if self.catalog.find(vm_uuid, name) is not None:
                    raise Conflict(f"VM {vm} already has a snapshot named {name!r}")
                disks = live_disks(dom)
                if not disks:
                    raise InvalidInput(f"VM {vm} has no disk kvmkit can snapshot")
                pairs = [(disk, driver_for(disk, self.drivers)) for disk in disks]
                try:
                    options = PlanOptions(allow_full_copy=allow_full_copy, extent_limit=self.extent_limit)
                    return self._create_locked(dom, vm, vm_uuid, name, pairs, crash_consistent, t_start, options)
                finally:
                    for driver in {id(d): d for _, d in pairs}.values():
                        driver.release()

    def _create_locked(self, dom: libvirt.virDomain, vm: str, vm_uuid: str, name: str,
                       pairs: list[tuple[Disk, StorageDriver]], crash_consistent: bool, t_start: float,
                       options: PlanOptions) -> Snapshot:
        mode = self._mode(dom, pairs, crash_consistent)
        planned = [driver.plan(disk, name, options) for disk, driver in pairs]
        snap = self.catalog.insert(Snapshot(vm_uuid=vm_uuid, vm=vm, name=name, created=datetime.now(),
                                            mode=mode, state=State.CREATING, disks=planned))
        failpoint("after-intent")
        try:
            taken = self._take(dom, mode, pairs, planned, name)
        except BaseException as exc:
            try:
                cleaned = f"removed {self.discard(snap)} partial disk snapshot(s)"
            except KvmkitError as cleanup_exc:
                cleaned = f"cleanup incomplete ({cleanup_exc}); `kvmkit snapshot recover` will finish it"
            if isinstance(exc, KvmkitError):
                raise type(exc)(f"{exc} (guest thawed; {cleaned})") from None
            raise
        snap.disks, snap.freeze_ms, snap.pause_ms = taken.disks, taken.freeze_ms, taken.pause_ms
        snap.storage_ms, snap.after_thaw_ms, snap.commit_ms = taken.storage_ms, taken.after_thaw_ms, taken.commit_ms
        snap.state = State.READY
        snap.total_ms = round((time.perf_counter() - t_start) * 1000, 1)
        self.catalog.update(snap)
        log.info("snapshot created", extra={"vm": vm, "snapshot": name, "mode": mode.value,
                                            "freeze_ms": snap.freeze_ms})
        return snap

    def _mode(self, dom: libvirt.virDomain, pairs: list[tuple[Disk, StorageDriver]], crash: bool) -> Mode:
        if not is_running(dom):
            return Mode.OFFLINE
        if crash:
            drivers = {driver.name for _, driver in pairs}
            driver = pairs[0][1]
            if (len(drivers) == 1 and isinstance(driver, GroupSnapshots)
                    and driver.serves_as_group([d for d, _ in pairs])):
                return Mode.GROUP
            return Mode.CRASH
        if not agent.ping(dom):
            raise EnvironmentProblem(f"VM {dom.name()}: no guest agent answers, so its filesystems cannot be "
                                     f"frozen; {agent.NO_AGENT_HINT}")
        return Mode.QUIESCED

    def _take(self, dom: libvirt.virDomain, mode: Mode, pairs: list[tuple[Disk, StorageDriver]],
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
        if mode is Mode.QUIESCED:
            stop, start, action = (lambda: agent.freeze(dom)), (lambda: agent.thaw(dom)), "thaw"
        else:
            stop, start, action = dom.suspend, dom.resume, "resume"
        direct = [(d, p) for d, p in zip(drivers, planned, strict=True) if p.method == "direct"]
        barriered = [(disk, d, p) for (disk, d), p in zip(pairs, planned, strict=True) if p.method == "overlay"]
        watchdog = Watchdog(self.uri, dom.UUIDString(), self.freeze_timeout_s, action,  # boots while we prepare
                            self.state_dir / "log" / "watchdog.log", (self.state_dir, self.catalog.path))
        entry = None
        if barriered:
            bdisks = [disk for disk, _, _ in barriered]
            entry = self.catalog.journal_add(dom.UUIDString(), "overlay", {
                "tag": name, "mode": self.overlay_barrier,
                "disks": [{"target": d.target, "source": d.source, "format": d.format} for d in bdisks]})
            try:
                barrier = self._prepare_barrier(dom, bdisks, name)
            except BaseException:
                watchdog.cancel()
                self._commit_back(dom, bdisks, name)  # nothing is on an overlay yet: this only tidies up
                self.catalog.journal_done(entry)
                raise
        try:  # with overlays, the watchdog stays on guard after the thaw: if we die, it merges them back
            window_ms, storage_ms, done = _quiet_window(watchdog, stop, start, [d for d, _ in direct],
                                                        [p for _, p in direct], self.sequential,
                                                        barrier if barriered else None)
        except BaseException:
            try:
                if barriered:  # the VM may already write to overlays: merge them back before reporting the failure
                    self._commit_back(dom, [disk for disk, _, _ in barriered], name)
                    if entry is not None:
                        self.catalog.journal_done(entry)
            finally:
                watchdog.release()
            raise
        failpoint("after-thaw")
        after_ms = commit_ms = None
        if barriered:
            t_after = time.perf_counter()
            try:
                made, commit_ms = self._complete_overlays(dom, barriered, name, entry)
            finally:
                watchdog.release()
            done += made
            after_ms = _ms_since(t_after)
        order = {p.target: i for i, p in enumerate(planned)}
        disks = sorted(done, key=lambda p: order[p.target])
        if mode is Mode.QUIESCED:
            return _Taken(disks, freeze_ms=window_ms, storage_ms=storage_ms, after_thaw_ms=after_ms,
                          commit_ms=commit_ms)
        return _Taken(disks, pause_ms=window_ms, storage_ms=storage_ms, after_thaw_ms=after_ms, commit_ms=commit_ms)

    def _prepare_barrier(self, dom: libvirt.virDomain, disks: list[Disk], tag: str) -> Callable[[], None]:
        """Everything the barrier needs, made before the freeze; returns the one call the freeze holds."""
        if self.overlay_barrier == "qmp":
            tops = overlay.qmp_prepare(dom, disks, tag)
            return lambda: overlay.qmp_barrier(dom, tops)
        targets = [disk.target for disk in live_disks(dom)]
        overlay.prepare(disks, tag)
        return lambda: overlay.barrier(dom, disks, targets, tag)

    def _commit_back(self, dom: libvirt.virDomain, disks: list[Disk], tag: str) -> None:
        overlay.finish(dom.connect(), dom, disks, tag, self.overlay_barrier)

    def _complete_overlays(self, dom: libvirt.virDomain, barriered: list[tuple[Disk, StorageDriver, DiskSnapshot]],
                           tag: str, entry: int | None) -> tuple[list[DiskSnapshot], float]:
        """After the thaw: clone (or copy) the quiet base files, then commit the overlays back — in every path.
        Returns the disk snapshots and how long the commit alone took (ms)."""
        try:
            made = _snapshot_all([d for _, d, _ in barriered], [p for _, _, p in barriered])
            failpoint("overlay-before-commit")
        finally:
            t_commit = time.perf_counter()
            self._commit_back(dom, [disk for disk, _, _ in barriered], tag)
            commit_ms = _ms_since(t_commit)
            if entry is not None:
                self.catalog.journal_done(entry)
        return made, commit_ms

    def discard(self, snap: Snapshot) -> int:
        """Delete whatever part of a snapshot exists, then drop its row; how many disk snapshots it removed.
        A storage error leaves the row (the intent) in place for `recover`."""
        removed = 0
        for disk_snap in snap.disks:
            driver = by_name(disk_snap.driver, self.drivers)
            if driver.exists(disk_snap):
                driver.delete(disk_snap)
                removed += 1
        assert snap.id is not None
        self.catalog.remove(snap.id)
        return removed

    # delete -----------------------------------------------------------------------------------------------
    def delete(self, vm: str, name: str, wait_s: float = 0.0) -> Snapshot:
        check_snapshot_name(name)
        with connection(self.uri) as conn:
            dom = lookup(conn, vm)
            with vm_lock(self.state_dir, dom.UUIDString(), vm, wait_s), \
                    snapshot_lock.deleting(self.state_dir, dom.UUIDString(), name, vm):  # not while backed up
                snap = self.catalog.get(dom.UUIDString(), name, vm)
                for disk_snap in snap.disks:
                    in_use = getattr(by_name(disk_snap.driver, self.drivers), "in_use", None)
                    reason = in_use(disk_snap) if in_use else None
                    if reason:
                        raise Conflict(f"snapshot {name} of VM {vm} is in use: {reason}")
                snap.state = State.DELETING
                self.catalog.update(snap)
                for disk_snap in snap.disks:
                    by_name(disk_snap.driver, self.drivers).delete(disk_snap)
                assert snap.id is not None
                self.catalog.remove(snap.id)
                return snap

    # revert -----------------------------------------------------------------------------------------------
    def revert(self, vm: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
               stop_timeout_s: float = 10.0, rollback: bool = False) -> Snapshot:
        from kvmkit.snapshot.revert import revert

        return revert(self, vm, name, force_stop=force_stop, wait_s=wait_s, stop_timeout_s=stop_timeout_s,
                      rollback=rollback)

    def flatten(self, vm: str, wait_s: float = 0.0) -> list[str]:
        """Copy parent data into disks that a revert by clone left as clones (O(size)): their base snapshots are
        then free to delete. Returns the targets flattened."""
        done = []
        with connection(self.uri) as conn:
            dom = lookup(conn, vm)
            with vm_lock(self.state_dir, dom.UUIDString(), vm, wait_s):
                for disk in live_disks(dom):
                    driver = driver_for(disk, self.drivers)
                    flatten = getattr(driver, "flatten_if_clone", None)
                    if flatten is not None and flatten(disk):
                        done.append(disk.target)
        return done

    def list(self, vm: str | None = None) -> list[Snapshot]:
        if vm is None:
            return self.catalog.list()
        with connection(self.uri) as conn:
            return self.catalog.list(lookup(conn, vm).UUIDString())


@dataclass
class _Taken:
    disks: list[DiskSnapshot]
    freeze_ms: float | None = None
    pause_ms: float | None = None
    storage_ms: float | None = None
    after_thaw_ms: float | None = None
    commit_ms: float | None = None


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


def _quiet_window(watchdog: Watchdog, stop: Callable[[], object], start: Callable[[], object],
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
