"""`kvmkit schedule`: periodic snapshots (optionally backed up) with retention, driven by a clock you can replace.

Schedules live in <state_dir>/schedules.json (0600, written atomically under a lock). `run_once(now)` takes the
snapshots that are due at `now`, names them sched-<now>, backs them up when asked, then prunes the VM's
scheduled snapshots and backups by the schedule's retention. Only snapshots named sched-… are ever pruned, so a
hand-made snapshot is never touched; the newest snapshot and the newest good backup always stay.

A schedule's job goes through the jobs layer like `snapshot create` does (recover pass, snapshot, backup, health
events). A failed job is loud: it is an action `error`, a health event, and `run --once` exits non-zero so the
timer's unit fails; `last_run` moves only when the job succeeded, so the next run tries again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from kvmkit import fsat
from kvmkit.backup import manage, retention
from kvmkit.config import Settings
from kvmkit.errors import Conflict, InvalidInput, KvmkitError, NotFound
from kvmkit.jobs.outcome import Outcome, record_failure

if TYPE_CHECKING:  # the snapshot core (and libvirt) only when a job runs: `schedule list` works without them
    from kvmkit.snapshot.context import SnapshotContext

log = logging.getLogger(__name__)
EVERY_RE = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Schedule(BaseModel):
    vm: str  # the VM, or with group=True the consistency group (snapshotted as one instant, pruned as one)
    every_s: int
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    backup: bool = False
    target: str | None = None
    last_run: datetime | None = None
    group: bool = False

    @property
    def policy(self) -> retention.RetentionPolicy:
        return retention.RetentionPolicy(self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly)


class RunAction(BaseModel):
    vm: str
    action: str  # snapshot | backup | pruned snapshot | pruned backups | error
    detail: str


def parse_every(text: str) -> int:
    match = EVERY_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise InvalidInput(f"--every {text!r}: use a number and a unit, e.g. 90s, 15m, 1h, 1d, 1w")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds < 60:
        raise InvalidInput(f"--every {text!r}: at least 1m (a snapshot per second is no schedule)")
    return seconds


def due(schedule: Schedule, now: datetime) -> bool:
    return schedule.last_run is None or now - schedule.last_run >= timedelta(seconds=schedule.every_s)


def next_due(schedules: list[Schedule], now: datetime) -> datetime:
    if not schedules:
        return now + timedelta(minutes=1)
    return min(now if s.last_run is None else s.last_run + timedelta(seconds=s.every_s) for s in schedules)


class ScheduleBook:
    """The schedules file; every change is read-modify-write under a lock, so `add` during `run` is safe."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "schedules.json"

    @contextmanager
    def edit(self) -> Iterator[list[Schedule]]:
        fsat.private_dirs(self.path.parent)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            schedules = self.read()
            yield schedules
            tmp = self.path.with_suffix(".tmp")
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(out, "w") as fh:
                fh.write("[" + ",".join(s.model_dump_json() for s in schedules) + "]")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            os.close(fd)

    def read(self) -> list[Schedule]:
        if not self.path.exists():
            return []
        import json

        try:
            return [Schedule.model_validate(item) for item in json.loads(self.path.read_text())]
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{self.path} is not a valid schedules file: {exc}") from None


def add(settings: Settings, schedule: Schedule, *, vm_exists: Callable[[str], bool] | None = None) -> Schedule:
    """Keep a schedule. `vm_exists` (the CLI asks libvirt) refuses a VM that is not defined: a schedule for a typo
    would only ever fail. None: the caller allowed a VM not created yet."""
    if schedule.policy.empty:
        raise InvalidInput("give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly")
    if schedule.backup and not settings.backup_targets:
        raise InvalidInput("--backup needs a backup target in the config ([[backup_targets]])")
    if vm_exists is not None and not vm_exists(schedule.vm) and schedule.group:
        raise NotFound(f"no consistency group named {schedule.vm!r}: define it with kvmkit snapshot create --group "
                       f"{schedule.vm} VM1 VM2 …")
    if vm_exists is not None and not vm_exists(schedule.vm):
        raise NotFound(f"no VM named {schedule.vm!r} is defined; pass --allow-undefined to schedule a VM not yet "
                       f"created")
    with ScheduleBook(settings.state_dir).edit() as schedules:
        if any(s.vm == schedule.vm for s in schedules):
            raise Conflict(f"VM {schedule.vm} already has a schedule; remove it first")
        schedules.append(schedule)
    return schedule


def remove(settings: Settings, vm: str) -> Schedule:
    book = ScheduleBook(settings.state_dir)
    if not any(s.vm == vm for s in book.read()):  # before edit(), which makes the state folder and lock file
        raise NotFound(f"VM {vm} has no schedule")
    with book.edit() as schedules:
        found = next((s for s in schedules if s.vm == vm), None)
        if found is None:
            raise NotFound(f"VM {vm} has no schedule")
        schedules.remove(found)
    return found


def run_once(settings: Settings, now: datetime, context: Callable[[], SnapshotContext]) -> list[RunAction]:
    """Run every schedule due at `now`; a failing VM is reported (an `error` action and a health event) and does
    not stop the others. `context` makes the snapshot context each job runs with."""
    book = ScheduleBook(settings.state_dir)
    actions: list[RunAction] = []
    for schedule in [s for s in book.read() if due(s, now)]:
        try:
            actions += _run_one(settings, schedule, now, context())
        except KvmkitError as exc:
            actions.append(RunAction(vm=schedule.vm, action="error", detail=str(exc)))
            continue  # last_run stays: the job is due again at the next run
        with book.edit() as schedules:
            for item in schedules:
                if item.vm == schedule.vm:
                    item.last_run = now
    return actions


def failed(actions: list[RunAction]) -> bool:
    return any(a.action == "error" for a in actions)


def _run_group(settings: Settings, schedule: Schedule, name: str, ctx: SnapshotContext) -> list[RunAction]:
    """A group's scheduled snapshot (its stored definition, one instant); with backup, each member's snapshot
    backed up and each member's scheduled backups pruned by the same policy (so the same instants stay for every
    member); then its older scheduled snapshots pruned as groups: a member's snapshot is never deleted alone."""
    from kvmkit.jobs.snapshots import take_group
    from kvmkit.snapshot.group_ops import delete_group

    group = schedule.vm
    outcomes = take_group(ctx, settings, group, [], name, backup=schedule.backup, target=schedule.target)
    actions = [RunAction(vm=group, action="snapshot", detail=f"{name} (group)")]
    for outcome in outcomes if schedule.backup else []:
        actions += _backed_up(settings, schedule, outcome)
    rows = [s for s in ctx.catalog.list(group=group) if s.name.startswith(retention.SCHEDULED_PREFIX)]
    taken = {s.name: retention.item_time(s.name, s.created) for s in rows}
    kept = retention.keep([retention.Item(n, t) for n, t in taken.items()], schedule.policy)
    for old in sorted(set(taken) - set(kept)):
        try:
            delete_group(ctx, group, old)
        except KvmkitError as exc:
            record_failure(settings.state_dir, "snapshot", group, exc)
            raise
        actions.append(RunAction(vm=group, action="pruned snapshot", detail=f"{old} (group)"))
    return actions


def _backed_up(settings: Settings, schedule: Schedule, outcome: Outcome) -> list[RunAction]:
    """A scheduled snapshot's backup (raised if it failed: take recorded it), then the VM's scheduled backups
    pruned by the schedule's policy."""
    snap, manifest = outcome.snapshot, outcome.backup
    assert snap is not None
    if outcome.backup_error is not None:
        raise outcome.backup_error
    assert manifest is not None
    actions = [RunAction(vm=snap.vm, action="backup",
                         detail=f"{snap.name} ({manifest.kind.value}, {manifest.written_bytes} bytes written)")]
    try:
        removal = manage.prune(settings, snap.vm_uuid, schedule.policy, schedule.target, scheduled_only=True)
    except KvmkitError as exc:
        record_failure(settings.state_dir, "backup", snap.vm, exc)
        raise
    if removal.deleted:
        actions.append(RunAction(vm=snap.vm, action="pruned backups", detail=", ".join(removal.deleted)))
    return actions


def _run_one(settings: Settings, schedule: Schedule, now: datetime, ctx: SnapshotContext) -> list[RunAction]:
    from kvmkit.jobs.snapshots import take
    from kvmkit.snapshot import lifecycle

    name = retention.SCHEDULED_PREFIX + now.strftime(retention.SCHEDULED_FORMAT)
    if schedule.group:
        return _run_group(settings, schedule, name, ctx)
    # the same steps as `kvmkit snapshot create`: recover pass, snapshot, back up outside the freeze
    outcome = take(ctx, settings, [schedule.vm], name, backup=schedule.backup, target=schedule.target)[0]
    if outcome.error is not None:
        raise outcome.error  # take recorded its health event
    snap = outcome.snapshot
    assert snap is not None
    actions = [RunAction(vm=schedule.vm, action="snapshot", detail=name)]
    if schedule.backup:
        actions += _backed_up(settings, schedule, outcome)
    scheduled = [s for s in ctx.catalog.list(snap.vm_uuid) if s.name.startswith(retention.SCHEDULED_PREFIX)]
    kept = retention.keep([retention.Item(s.name, retention.item_time(s.name, s.created)) for s in scheduled],
                          schedule.policy)
    for old in scheduled:
        if old.name not in kept:
            try:
                lifecycle.delete(ctx, schedule.vm, old.name)
            except KvmkitError as exc:
                record_failure(settings.state_dir, "snapshot", schedule.vm, exc)
                raise
            actions.append(RunAction(vm=schedule.vm, action="pruned snapshot", detail=old.name))
    return actions
