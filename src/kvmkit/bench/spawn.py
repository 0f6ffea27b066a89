"""Run a command and learn its true peak RSS.

Why not simply wait4() on the child: Linux keeps a process's ru_maxrss across execve(), and exec records the
high-water mark of the *old* address space — for a child forked (or vforked) from kvmkit, that is kvmkit's own
RSS. fio forked from a 35 MiB kvmkit reported 35 MiB although fio itself peaks near 30 MiB. So the command is
started by a tiny helper (python -S, a few MiB) that forks it from its own small address space, waits with
wait4() and writes the child's ru_maxrss to a file. The helper runs in its own session so a timeout or Ctrl-C
kills the whole group, fio's job processes included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Our own fixed code, passed as an argument (no shell); argv[1] = file for the peak RSS, argv[2:] = the command.
_HELPER = """\
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True)
class Spawned:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_kib: int
    timed_out: bool


def spawn(argv: Sequence[str], timeout_s: float) -> Spawned:
    """Run argv (a list, never a shell string) to completion or timeout; output via files, not pipes."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", prefix="kvmkit-rss-") as rss,
    ):
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, rss.name, *argv],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)  # Ctrl-C: fio lives in its own session, so take it down with us
            raise
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        peak = rss.read().strip()
        return Spawned(
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            wall_s=wall,
            peak_rss_kib=int(peak) if peak.isdigit() else 0,
            timed_out=timed_out,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
