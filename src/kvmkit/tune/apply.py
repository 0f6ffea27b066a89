"""`apply` and `rollback`: runtime-safe sysfs/sysctl writes, with the previous values saved first.

Order of events, so every state change is recoverable:
  1. plan: the profile's failing checks whose recipe is runtime-safe → (path, new value); read each old value
  2. write the rollback file (mode 0600, created exclusively: an existing one means an earlier apply was never
     rolled back, and overwriting it would lose the original values)
  3. write each value, then read it back (sysfs may accept a write and keep another value)
  4. if any write failed: put back the ones that succeeded, delete the rollback file, raise OperationFailed
`rollback` restores the saved values newest-first and deletes the file only when all of them went back.

Every path written — planned, or read back from a rollback file that anyone with root's files could have edited —
must be a kernel tunable: an absolute, normalised path under /sys/ or /proc/sys/ whose real location (symlinks in
sysfs resolved) stays inside the root's sys or proc/sys, opened without creating and without following a final
symlink. A rollback file naming /etc/shadow is refused before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from kvmkit import fsat
from kvmkit.errors import Conflict, InvalidInput, NotFound, OperationFailed
from kvmkit.tune.checks import bracketed
from kvmkit.tune.evaluate import evaluate
from kvmkit.tune.fixes import plan_writes
from kvmkit.tune.hostfs import HostView
from kvmkit.tune.model import Reading, Status
from kvmkit.tune.profiles import Profile

log = logging.getLogger(__name__)
ROLLBACK_FORMAT = 1
WRITABLE_ROOTS = ("/sys/", "/proc/sys/")  # the only places apply and rollback ever write
MAX_ROLLBACK_BYTES = 4 << 20
MAX_VALUE = 4096


class Change(BaseModel):
    check: str = Field(max_length=200)
    path: str = Field(max_length=4096)
    old: str = Field(max_length=MAX_VALUE)
    new: str = Field(max_length=MAX_VALUE)
    outcome: str = "planned"  # planned | done | failed | restored | not-restored
    error: str = ""


class RollbackRecord(BaseModel):
    format: int = ROLLBACK_FORMAT
    created: str
    root: str
    goal: str
    changes: list[Change] = Field(max_length=100_000)


class ApplyResult(BaseModel):
    goal: str
    root: str
    dry_run: bool
    rollback_file: str | None
    changes: list[Change]
    not_runtime: list[str]  # failing checks apply cannot fix at runtime (see `audit` for their remedies)


def current_value(host: HostView, path: str) -> str:
    """The value a file holds, in the form it is written back (the selected word of a choice file)."""
    text = host.path(path).read_text().strip()
    return bracketed(text) if "[" in text else text


def confined(host: HostView, path: str) -> Path:
    """The real file behind a kernel-tunable host path, or InvalidInput: anything else is never written."""
    if (not isinstance(path, str) or not path.startswith(WRITABLE_ROOTS) or os.path.normpath(path) != path
            or "\x00" in path):
        raise InvalidInput(f"{path!r} is not under {' or '.join(WRITABLE_ROOTS)}: tune writes only kernel tunables")
    real = Path(os.path.realpath(host.path(path)))
    roots = [Path(os.path.realpath(host.path(r))) for r in WRITABLE_ROOTS]
    if not any(real == r or r in real.parents for r in roots):
        raise InvalidInput(f"{path} leads to {real}, outside {' and '.join(map(str, roots))}: refused")
    return host.path(path)


def check_paths(host: HostView, changes: list[Change], source: object) -> None:
    """Every path confined, before the first write: a bad record changes nothing."""
    for change in changes:
        try:
            confined(host, change.path)
        except InvalidInput as exc:
            raise InvalidInput(f"{source}: {exc}") from None


def _write(host: HostView, path: str, value: str) -> None:
    """Write without creating (a missing sysfs file must fail, in a fixture tree exactly as on a host), only to a
    confined path, never through a final symlink."""
    fd = os.open(confined(host, path), os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _root_id(host: HostView) -> str:
    """The root as an absolute path, so a rollback from another working folder still matches."""
    return str(host.root.resolve())


def _error(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def plan(host: HostView, profile: Profile, readings: list[Reading], only: set[str] | None = None) -> ApplyResult:
    """What apply would change on this host, with each old value. Reads only."""
    if only and only - set(profile.rules):
        missing = ", ".join(sorted(only - set(profile.rules)))
        raise InvalidInput(f"--only: {missing} not in goal {profile.name!r}; its checks: {', '.join(profile.rules)}")
    changes: list[Change] = []
    not_runtime: list[str] = []
    by_id = {r.check: r for r in readings}
    for finding in evaluate(profile, readings):
        if finding.status not in (Status.WARN, Status.FAIL) or (only and finding.check not in only):
            continue
        rule = profile.rules[finding.check]
        writes = plan_writes(host, by_id[finding.check], finding.bad_instances, rule.candidates)
        if not writes:
            not_runtime.append(finding.check)
        for write in writes:
            try:
                old = current_value(host, write.path)
            except OSError as exc:
                changes.append(
                    Change(
                        check=finding.check,
                        path=write.path,
                        old="",
                        new=write.value,
                        outcome="failed",
                        error=f"cannot read the current value: {_error(exc)}",
                    )
                )
                continue
            if old != write.value:
                changes.append(Change(check=finding.check, path=write.path, old=old, new=write.value))
    return ApplyResult(
        goal=profile.name,
        root=str(host.root),
        dry_run=True,
        rollback_file=None,
        changes=changes,
        not_runtime=not_runtime,
    )


def _save(record: RollbackRecord, path: Path, exclusive: bool) -> None:
    """Write the rollback record with mode 0600 (it describes the host's state; only root should edit it)."""
    if exclusive and path.exists():
        raise Conflict(f"rollback file {path} exists from an earlier apply: run `kvmkit tune rollback` first")
    fsat.write_private(path, record.model_dump_json(indent=2).encode())


def _load(path: Path) -> RollbackRecord:
    try:
        data = fsat.read_private(path, MAX_ROLLBACK_BYTES, others=0o022)
    except FileNotFoundError:
        raise NotFound(f"no rollback file at {path}: nothing to roll back") from None
    except OSError as exc:
        raise InvalidInput(f"rollback file {path}: cannot open it ({exc.strerror})") from None
    except ValueError as exc:
        raise InvalidInput(f"rollback file {path} is {exc}: refused") from None
    try:
        return RollbackRecord.model_validate(json.loads(data))
    except (ValueError, ValidationError, RecursionError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise InvalidInput(f"rollback file {path} is not a kvmkit tune rollback record: {first}") from None


def _restore(host: HostView, changes: list[Change]) -> list[Change]:
    """Put old values back, newest first; returns the changes that could not be restored."""
    stuck = []
    for change in reversed(changes):
        try:
            _write(host, change.path, change.old)
            change.outcome = "restored"
        except OSError as exc:
            change.outcome, change.error = "not-restored", _error(exc)
            stuck.append(change)
    return stuck


def apply(host: HostView, planned: ApplyResult, rollback_file: Path) -> ApplyResult:
    """Perform a plan from `plan`. Raises OperationFailed (after undoing what worked) if any write fails."""
    pending = [c for c in planned.changes if c.outcome == "planned"]
    failed = [c for c in planned.changes if c.outcome == "failed"]
    result = planned.model_copy(update={"dry_run": False, "rollback_file": str(rollback_file)})
    if failed:
        raise OperationFailed(f"nothing was changed: {failed[0].path}: {failed[0].error}")
    if not pending:
        return result.model_copy(update={"rollback_file": None})
    check_paths(host, pending, "apply plan")
    record = RollbackRecord(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        root=_root_id(host),
        goal=planned.goal,
        changes=pending,
    )
    _save(record, rollback_file, exclusive=True)
    done: list[Change] = []
    touched: list[Change] = []  # written, even if the kernel then kept another value: all of these go back
    for change in pending:
        try:
            _write(host, change.path, change.new)
            touched.append(change)
            kept = current_value(host, change.path)
            if kept != change.new:
                change.outcome, change.error = "failed", f"the kernel kept {kept!r}"
                failed.append(change)
                continue
            change.outcome = "done"
            done.append(change)
            log.info(
                "tune apply",
                extra={"check": change.check, "path": change.path, "old": change.old, "new": change.new},
            )
        except OSError as exc:
            change.outcome, change.error = "failed", _error(exc)
            failed.append(change)
    if failed:
        what = "; ".join(f"{c.check} {c.path}: {c.error}" for c in failed[:3])
        stuck = _restore(host, touched)
        if stuck:
            _save(record.model_copy(update={"changes": stuck}), rollback_file, exclusive=False)
            raise OperationFailed(
                f"{len(failed)} of {len(pending)} writes failed ({what}); {len(stuck)} of the "
                f"successful ones could not be put back, see {rollback_file}"
            )
        rollback_file.unlink()
        undone = f"the {len(done)} that succeeded were rolled back" if done else "nothing was changed"
        raise OperationFailed(f"{len(failed)} of {len(pending)} writes failed ({what}); {undone}")
    return result


def rollback(host: HostView, rollback_file: Path) -> list[Change]:
    """Restore what the last apply changed; the file goes away only when everything was restored."""
    record = _load(rollback_file)
    if record.root != _root_id(host):
        raise InvalidInput(f"rollback file {rollback_file} was written for root {record.root}, not {_root_id(host)}")
    changes = [c.model_copy(update={"outcome": "done"}) for c in record.changes]
    check_paths(host, changes, f"rollback file {rollback_file}")
    stuck = _restore(host, changes)
    if stuck:
        _save(record.model_copy(update={"changes": stuck}), rollback_file, exclusive=False)
        what = "; ".join(f"{c.path}: {c.error}" for c in stuck[:3])
        raise OperationFailed(
            f"{len(stuck)} of {len(changes)} values could not be restored ({what}); they stay in {rollback_file}"
        )
    rollback_file.unlink()
    return changes
