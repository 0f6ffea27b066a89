"""Consistency groups: several VMs (a database, its queue, its app servers) snapshotted as one instant.

  lock every VM (in uuid order) → plan every disk of every VM → one `creating` row per VM, all marked with the
  group (the intent) → one watchdog per running VM → freeze every guest in parallel under one deadline → every
  disk of every VM snapshotted concurrently (file disks by reflink or behind their overlay barrier) → thaw every
  guest in parallel (always) → every row `ready` in one transaction.

A VM whose freeze fails fails the group: every guest is thawed and nothing is kept. With `--crash-consistent` and
every disk of every VM on one storage that can snapshot them atomically (`GroupSnapshots`: an `rbd.Group` spanning
the VMs' images in one pool), the group is one storage-side snapshot with no freeze and no pause; otherwise
crash-consistent means every VM paused in parallel for the window. Each row records when its VM's freeze (or pause)
began and its thaw (or resume) ended, so anyone can check that every window overlapped every other.

A crash at any step leaves every row `creating` (they turn `ready` together): `recover` discards them all, and
each VM's watchdog thaws its guest. Revert and delete of a group are in group_ops.py.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, KvmkitError, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.snapshot import create as single
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.drivers.base import GroupSnapshots, PlanOptions, StorageDriver
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

MAX_GROUP_VMS = 64


@dataclass
class Member:
    """One VM of the group, as this operation sees it."""

    vm: str
    dom: Domain
    uuid: str
    pairs: list[tuple[Disk, StorageDriver]]
    mode: Mode = Mode.OFFLINE
    planned: list[DiskSnapshot] = field(default_factory=list)
    row: Snapshot | None = None
    watchdog: WatchdogHandle | None = None
    barrier: object = None  # the one call the freeze holds for its overlay disks (create._prepare_barrier)
    journal: int | None = None  # the overlay journal entry, if any
    began: datetime | None = None
    ended: datetime | None = None
    frozen: bool = False

    @property
    def barriered(self) -> list[tuple[Disk, StorageDriver, DiskSnapshot]]:
        return [(d, drv, p) for (d, drv), p in zip(self.pairs, self.planned, strict=True) if p.method is Method.BARRIER]


def resolve_vms(ctx: SnapshotContext, group: str, vms: list[str]) -> list[str]:
    """The group's VMs: the ones named (then kept in the catalog as its definition), else the stored ones."""
    check_snapshot_name(group)
    vms = list(dict.fromkeys(vms))
    if len(vms) > MAX_GROUP_VMS:
        raise InvalidInput(f"group {group}: at most {MAX_GROUP_VMS} VMs")
    if vms:
        ctx.catalog.define_group(group, vms)
        return vms
    stored = ctx.catalog.group_vms(group)
    if not stored:
        raise InvalidInput(f"group {group} is not defined: name its VMs once (kvmkit snapshot create --group "
                           f"{group} VM1 VM2 …)")
    return stored


def create_group(ctx: SnapshotContext, group: str, vms: list[str], name: str | None = None, *,
                 crash_consistent: bool = False, wait_s: float = 0.0,
                 allow_full_copy: bool = False) -> list[Snapshot]:
    """Snapshot every VM of the group at one instant (see the module docstring); one row per VM."""
    vms = resolve_vms(ctx, group, vms)
    name = check_snapshot_name(name) if name is not None else default_name(ctx.clock())
    t_start = time.perf_counter()
    with connection(ctx.uri) as conn, ExitStack() as stack:
        members = []
        for vm in vms:
            dom = lookup(conn, vm)
            members.append(Member(vm, dom, dom.UUIDString(), []))
        members.sort(key=lambda m: m.uuid)  # one lock order for every group: two groups sharing a VM never deadlock
        for m in members:
            stack.enter_context(vm_lock(ctx.state_dir, m.uuid, m.vm, wait_s))
        failpoint("after-lock")
        for m in members:
            if ctx.catalog.find(m.uuid, name) is not None:
                raise Conflict(f"VM {m.vm} already has a snapshot named {name!r}")
            disks = live_disks(m.dom)
            if not disks:
                raise InvalidInput(f"VM {m.vm} has no disk kvmkit can snapshot")
            require_local(conn, disks)
            m.pairs = [(disk, driver_for(disk, ctx.drivers)) for disk in disks]
        try:
            return _create_locked(ctx, group, name, members, crash_consistent, allow_full_copy, t_start)
        finally:
            for driver in {id(d): d for m in members for _, d in m.pairs}.values():
                driver.release()


def _modes(ctx: SnapshotContext, members: list[Member], crash: bool) -> GroupSnapshots | None:
    """Each member's mode; the storage that takes the whole group in one snapshot, if it can (crash only)."""
    running = [m for m in members if is_running(m.dom)]
    pairs = [p for m in members for p in m.pairs]
    if crash and running:
        driver = pairs[0][1]
        if (len({d.name for _, d in pairs}) == 1 and isinstance(driver, GroupSnapshots)
                and driver.serves_as_group([disk for disk, _ in pairs])):
            for m in members:
                m.mode = Mode.GROUP
            return driver
    for m in running:
        if crash:
            m.mode = Mode.CRASH
        elif not ctx.guest.ping(m.dom):
            raise EnvironmentProblem(f"VM {m.vm}: no guest agent answers, so its filesystems cannot be frozen "
                                     f"and group snapshot cannot be consistent; {agent.NO_AGENT_HINT}")
        else:
            m.mode = Mode.QUIESCED
    return None


def _create_locked(ctx: SnapshotContext, group: str, name: str, members: list[Member], crash: bool,
                   allow_full_copy: bool, t_start: float) -> list[Snapshot]:
    group_driver = _modes(ctx, members, crash)
    for m in members:
        options = PlanOptions(allow_full_copy=allow_full_copy, extent_limit=ctx.extent_limit,
                              owner=ctx.catalog.catalog_id, vm_uuid=m.uuid)
        m.planned = [driver.plan(disk, name, options) for disk, driver in m.pairs]
    created = ctx.clock()
    for m in members:
        m.row = ctx.catalog.insert(Snapshot(vm_uuid=m.uuid, vm=m.vm, name=name, created=created, mode=m.mode,
                                            state=State.CREATING, disks=m.planned, group=group))
    failpoint("after-intent")
    try:
        if group_driver is not None:
            t0 = time.perf_counter()
            done = group_driver.group_snapshot([p for m in members for p in m.planned], f"g-{group}", name)
            storage_ms, after_ms = single._ms_since(t0), None
            made = _split(members, done)
        else:
            storage_ms, after_ms, made = _take(ctx, name, members)
    except BaseException as exc:
        cleaned = _discard_all(ctx, members)
        if isinstance(exc, KvmkitError):
            raise exc.rephrased(f"group {group}: {exc} (every guest thawed; {cleaned})") from exc
        raise
    total_ms = round((time.perf_counter() - t_start) * 1000, 1)
    rows = []
    for m in members:
        assert m.row is not None
        window = _window_ms(m)
        m.row.disks, m.row.state, m.row.total_ms = made[m.uuid], State.READY, total_ms
        m.row.storage_ms, m.row.after_thaw_ms = storage_ms, after_ms
        m.row.freeze_began, m.row.thaw_ended = m.began, m.ended
        if m.mode is Mode.QUIESCED:
            m.row.freeze_ms = window
        elif m.mode is Mode.CRASH:
            m.row.pause_ms = window
        elif m.mode is Mode.GROUP:
            m.row.freeze_ms = 0.0
        rows.append(m.row)
    ctx.catalog.update_many(rows)  # every member ready together
    log.info("group snapshot created", extra={"group": group, "snapshot": name, "vms": len(rows)})
    return rows


def _window_ms(m: Member) -> float | None:
    if m.began is None or m.ended is None:
        return None
    return round((m.ended - m.began).total_seconds() * 1000, 2)


def _split(members: list[Member], done: list[DiskSnapshot]) -> dict[str, list[DiskSnapshot]]:
    """The storage's answers, back to the member each disk belongs to (in the order they were planned)."""
    out, i = {}, 0
    for m in members:
        out[m.uuid] = done[i:i + len(m.planned)]
        i += len(m.planned)
    return out


def _discard_all(ctx: SnapshotContext, members: list[Member]) -> str:
    removed, problems = 0, []
    for m in members:
        if m.row is None:
            continue
        try:
            removed += discard(ctx, m.row)
        except KvmkitError as exc:
            problems.append(f"{m.vm}: {exc}")
    if problems:
        return (f"removed {removed} partial disk snapshot(s); cleanup incomplete ({'; '.join(problems)}): "
                "`kvmkit snapshot recover` will finish it")
    return f"removed {removed} partial disk snapshot(s)"


def _take(ctx: SnapshotContext, name: str, members: list[Member]) -> tuple[float, float | None,
                                                                         dict[str, list[DiskSnapshot]]]:
    """One window for every running member: freeze all in parallel, snapshot every disk, thaw all in parallel."""
    live = [m for m in members if m.mode in (Mode.QUIESCED, Mode.CRASH)]
    for m in live:  # the watchdogs boot while the barriers are prepared
        action = "thaw" if m.mode is Mode.QUIESCED else "resume"
        m.watchdog = ctx.watchdog(ctx.uri, m.uuid, ctx.freeze_timeout_s, action,
                                  ctx.state_dir / "log" / "watchdog.log", (ctx.state_dir, ctx.catalog.path))
    try:
        _prepare_barriers(ctx, name, live)
    except BaseException:
        for m in live:
            assert m.watchdog is not None
            m.watchdog.cancel()
        _commit_all(ctx, name, live)
        raise
    direct = [(drv, p) for m in members for (_, drv), p in zip(m.pairs, m.planned, strict=True)
              if p.method is Method.DIRECT or m.mode is Mode.OFFLINE]
    try:
        storage_ms, done = _window(ctx, live, direct)
    except BaseException:
        try:
            _commit_all(ctx, name, live)
        finally:
            for m in live:
                assert m.watchdog is not None
                m.watchdog.release()
        raise
    failpoint("after-thaw")
    after_ms = None
    if any(m.barriered for m in live):
        t_after = time.perf_counter()
        for m in live:
            if not m.barriered:
                continue
            try:
                made, _ = single._complete_overlays(ctx, m.dom, m.barriered, name, m.journal)
            finally:
                assert m.watchdog is not None
                m.watchdog.release()
            done += made
        after_ms = single._ms_since(t_after)
    else:
        for m in live:
            assert m.watchdog is not None
            m.watchdog.release()
    by_handle = {d.handle: d for d in done}
    return storage_ms, after_ms, {m.uuid: [by_handle[p.handle] for p in m.planned] for m in members}


def _prepare_barriers(ctx: SnapshotContext, name: str, live: list[Member]) -> None:
    for m in live:
        if m.mode is not Mode.QUIESCED and m.mode is not Mode.CRASH:
            continue
        disks = [disk for disk, _, _ in m.barriered]
        if not disks:
            continue
        m.journal = ctx.catalog.journal_add(m.uuid, OverlayJournal(
            tag=name, mode=ctx.overlay_barrier,
            disks=[OverlayDisk(target=d.target, source=d.source, format=d.format) for d in disks]))
        m.barrier = single._prepare_barrier(ctx, m.dom, disks, name)


def _commit_all(ctx: SnapshotContext, name: str, live: list[Member]) -> None:
    """Merge every member's overlays back (there may be none yet) and close their journal entries."""
    for m in live:
        if m.barriered and m.journal is not None:
            single._commit_back(ctx, m.dom, [disk for disk, _, _ in m.barriered], name)
            ctx.catalog.journal_done(m.journal)


def _stop(ctx: SnapshotContext, m: Member) -> None:
    assert m.watchdog is not None
    m.watchdog.arm()
    m.began = datetime.now(UTC)
    if m.mode is Mode.QUIESCED:
        ctx.guest.freeze(m.dom)
    else:
        pause(m.dom)
    m.frozen = True


def _start(ctx: SnapshotContext, m: Member) -> None:
    try:
        if m.mode is Mode.QUIESCED:
            ctx.guest.thaw(m.dom)
        else:
            resume(m.dom)
    except BaseException:
        if m.watchdog is not None:
            m.watchdog.abandon()  # it retries the thaw on its own
        raise
    finally:
        m.ended = datetime.now(UTC)


def _window(ctx: SnapshotContext, live: list[Member],
            direct: list[tuple[StorageDriver, DiskSnapshot]]) -> tuple[float, list[DiskSnapshot]]:
    """Freeze every live member in parallel; once all are frozen, snapshot every disk (and run every overlay
    barrier) concurrently; then thaw every member in parallel — in every path. A failed freeze fails the group."""
    for m in live:  # every watchdog connected before any guest freezes (they booted side by side meanwhile)
        assert m.watchdog is not None
        m.watchdog.wait_ready()
    guests = single._warm_pool(len(live))
    disks_pool = single._warm_pool(len(direct))
    errors: list[BaseException] = []
    done: list[DiskSnapshot] = []
    storage_ms = 0.0
    try:
        futures = [guests.submit(_stop, ctx, m) for m in live]
        for fut in futures:
            try:
                fut.result()
            except BaseException as exc:
                errors.append(exc)
        try:
            if not errors:
                failpoint("after-freeze")
                barriers = [m.barrier for m in live if callable(m.barrier)]
                t0 = time.perf_counter()
                done = single._snapshot_all([d for d, _ in direct], [p for _, p in direct], disks_pool,
                                            alongside=(lambda: [b() for b in barriers]) if barriers else None)
                storage_ms = single._ms_since(t0)
        finally:
            attempted = [m for m in live if m.watchdog is not None and (m.frozen or m.began is not None)]
            thaws = [guests.submit(_start, ctx, m) for m in attempted]
            thaw_errors = []
            for m, fut in zip(attempted, thaws, strict=True):
                try:
                    fut.result()
                except BaseException as exc:
                    if m.frozen:
                        thaw_errors.append(exc)
            fired = [m.vm for m in live if m.watchdog is not None and m.began is not None
                     and not m.watchdog.disarm(guard=bool(m.barriered))]
            for m in live:  # never armed (its freeze was not reached): stop its watchdog
                if m.began is None and m.watchdog is not None:
                    m.watchdog.cancel()
            if thaw_errors and not errors:
                raise thaw_errors[0]
    finally:
        guests.shutdown()
        disks_pool.shutdown()
    if errors:
        raise errors[0]
    if fired:
        raise OperationFailed(f"the group snapshot outlasted the {ctx.freeze_timeout_s:g} s freeze deadline on "
                              f"{', '.join(fired)}; the watchdog thawed them first, so the snapshot was discarded")
    return storage_ms, done
