"""A lock between `backup create` (reading a snapshot) and `snapshot delete` (removing it).

Without it, deleting a snapshot while it is being backed up pulls the file or RBD snapshot from under the reader:
the backup fails half-way at best, and at worst reads a reused name. Backups hold the lock shared (several targets
may read one snapshot at once); delete takes it exclusively without waiting and says who holds it. It is a flock
on a file under the state dir, so it dies with its process (kill -9 leaves nothing stale).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmkit import fsat
from kvmkit.errors import Conflict, EnvironmentProblem
from kvmkit.names import check_snapshot_name

LOCK_DIR = "locks"


def lock_path(state_dir: Path, vm_uuid: str, snapshot: str) -> Path:
    check_snapshot_name(snapshot)
    folder = state_dir / LOCK_DIR
    fsat.private_dirs(folder)
    return folder / f"snapshot-{vm_uuid}-{snapshot}.lock"


@contextmanager
def reading(state_dir: Path, vm_uuid: str, snapshot: str, vm: str) -> Iterator[None]:
    """Held by a backup while it reads the snapshot; waits for a delete in progress to finish."""
    with flocked(lock_path(state_dir, vm_uuid, snapshot), exclusive=False, wait=True, busy=""):
        yield


@contextmanager
def deleting(state_dir: Path, vm_uuid: str, snapshot: str, vm: str) -> Iterator[None]:
    """Held by `snapshot delete`: refused at once while a backup reads the snapshot."""
    busy = f"snapshot {snapshot} of VM {vm} is being backed up; delete it when the backup is done"
    try:
        lock = flocked(lock_path(state_dir, vm_uuid, snapshot), exclusive=True, wait=False, busy=busy)
        lock.__enter__()
    except EnvironmentProblem:
        raise Conflict(busy) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


@contextmanager
def flocked(path: Path, exclusive: bool, wait: bool, busy: str) -> Iterator[None]:
    """flock(path) shared or exclusive; without wait, EnvironmentProblem(busy) when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise EnvironmentProblem(busy) from None
        yield
    finally:
        os.close(fd)
