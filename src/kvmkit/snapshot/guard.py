"""Guards around an operation on a VM: the per-VM lock and the thaw watchdog."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from kvmkit import fsat
from kvmkit.errors import Conflict, OperationFailed


def _lock_path(state_dir: Path, vm_uuid: str) -> Path:
    path = state_dir / "locks" / f"{vm_uuid}.lock"
    fsat.private_dirs(path.parent)
    return path


@contextmanager
def vm_lock(state_dir: Path, vm_uuid: str, vm: str, wait_s: float = 0.0) -> Iterator[None]:
    """One kvmkit operation per VM at a time, across processes; the kernel drops the lock if we die."""
    fd = os.open(_lock_path(state_dir, vm_uuid), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise Conflict(f"VM {vm} is busy: another kvmkit operation (pid {holder}) holds its lock") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def is_locked(state_dir: Path, vm_uuid: str) -> bool:
    fd = os.open(_lock_path(state_dir, vm_uuid), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class WatchdogHandle(Protocol):
    """What the engine does with a watchdog (see Watchdog for the meaning of each step)."""

    deadline_s: float

    def wait_ready(self) -> None: ...

    def arm(self) -> None: ...

    def cancel(self) -> None: ...

    def abandon(self) -> None: ...

    def disarm(self, guard: bool = False) -> bool: ...

    def release(self) -> None: ...


# (uri, vm_uuid, deadline_s, action "thaw"|"resume", log path, (state dir, catalog) to recover with) → a handle
WatchdogFactory = Callable[[str, str, float, str, Path, "tuple[Path, Path] | None"], WatchdogHandle]


class Watchdog:
    """Handle on a running watchdog process (see watchdog.py for the protocol). It starts booting when made and is
    waited for only when armed, so its start-up (30-200 ms of Python and libvirt here) overlaps the caller's own
    preparation instead of adding to it."""

    def __init__(self, uri: str, vm_uuid: str, deadline_s: float, action: str, log: Path,
                 recover_with: tuple[Path, Path] | None = None) -> None:
        """recover_with: (state dir, catalog) — what the watchdog recovers with if kvmkit dies while guarded."""
        self.deadline_s, self.log, self._ready = deadline_s, log, False
        fsat.private_dirs(log.parent)
        extra = [str(p) for p in recover_with] if recover_with else []
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "kvmkit.snapshot.watchdog", uri, vm_uuid, str(deadline_s), action,
                 *extra], cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                text=True,
            )

    def wait_ready(self) -> None:
        """Wait until it is connected; raise (nothing frozen yet) if it never was. A group waits for every VM's
        watchdog before freezing any, so no guest stays frozen while another's watchdog is still booting."""
        if not self._ready:
            line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
            if line != "ready":
                self.cancel()
                raise OperationFailed(f"the thaw watchdog did not start (see {self.log}); nothing was frozen")
            self._ready = True

    def arm(self) -> None:
        """Wait until it is connected, then start its deadline clock; raise (nothing frozen yet) if it never was."""
        assert self.proc.stdin
        self.wait_ready()
        self.proc.stdin.write("armed\n")
        self.proc.stdin.flush()

    def cancel(self) -> None:
        """Stop a watchdog that was never armed (the operation failed before any freeze)."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def abandon(self) -> None:
        """Close our end: the watchdog takes over the thaw (used when our own thaw failed)."""
        if self.proc.stdin:
            self.proc.stdin.close()

    def disarm(self, guard: bool = False) -> bool:
        """Tell it we thawed; False if it had already fired (the freeze overran its deadline). guard=True keeps it
        watching (see release): disks are on overlays until they are committed back."""
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write("guard\n" if guard else "done\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self.proc.stdout.readline().strip()
        if answer.startswith("fired") or not guard:
            self.release()
        return not answer.startswith("fired")

    def release(self) -> None:
        """The overlays are merged (or there were none): let it go."""
        if self.proc.poll() is None and self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write("released\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)  # after an abandon it may still be retrying the thaw: never block longer
        except subprocess.TimeoutExpired:
            pass
