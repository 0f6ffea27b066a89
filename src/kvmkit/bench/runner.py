"""Where fio runs. The engine talks to a `Runner` only; `HostRunner` runs fio as a local subprocess.

A lab VM runs fio through the guest agent: `command_runner.CommandRunner` implements this protocol on top of
nothing but "exec this argv there" (guest-exec), probing with stat/blockdev/df/cmp and reading logs with cat.
Nothing above this seam knows where fio ran.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

from kvmkit.bench.probe import TargetProbe, probe_host
from kvmkit.bench.schema import Machine
from kvmkit.bench.spawn import spawn
from kvmkit.errors import EnvironmentProblem, OperationFailed

OWNER_XATTR = "user.kvmkit.bench"  # set on files kvmkit created: they may be overwritten without --destructive


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_kib: int  # of the process tree that ran (fio and the job processes it forked)


class Runner(Protocol):
    """The seam for executing fio somewhere. Implement this for in-guest fio (lab VM via qemu-ga)."""

    name: str  # "host" or "vm:NAME"; recorded in the result

    def machine(self) -> Machine: ...  # kernel, CPU, RAM of where fio runs

    def probe(self, path: str) -> TargetProbe: ...  # facts about the target there, changes nothing

    def run(self, argv: Sequence[str], timeout_s: float) -> Completed: ...  # an argv, never a shell string

    def read_lines(self, path: str) -> Iterator[str]: ...  # stream a text file there (latency logs)

    def scratch(self) -> AbstractContextManager[str]: ...  # a temporary directory there, removed on exit

    def claim(self, path: str, filled_bytes: int | None = None) -> None: ...  # mark a file as kvmkit's

    def remove(self, path: str) -> None: ...  # delete a file kvmkit created


class HostRunner:
    """fio as a subprocess of kvmkit, on this machine."""

    name = "host"

    def __init__(self, tmp_root: str | None = None) -> None:
        self.tmp_root = tmp_root  # where fio's latency logs go for a run; default: $TMPDIR

    def machine(self) -> Machine:
        cpu_model = platform.processor() or "unknown"
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                cpu_model = next(
                    (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), cpu_model
                )
        except OSError:
            pass
        return Machine(
            hostname=platform.node(),
            kernel=platform.release(),
            cpu_model=cpu_model,
            cpus=os.cpu_count() or 1,
            ram_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            runner=self.name,
        )

    def probe(self, path: str) -> TargetProbe:
        return probe_host(path, OWNER_XATTR)

    def run(self, argv: Sequence[str], timeout_s: float) -> Completed:
        argv = list(argv)
        if shutil.which(argv[0]) is None:
            hint = ": install fio (Debian: apt-get install fio)" if "fio" in os.path.basename(argv[0]) else ""
            raise EnvironmentProblem(f"{argv[0]} not found on this host{hint}")
        done = spawn(argv, timeout_s)
        if done.timed_out:
            raise OperationFailed(f"{argv[0]} did not finish within {timeout_s:.0f} s and was killed")
        return Completed(argv, done.returncode, done.stdout, done.stderr, done.wall_s, done.peak_rss_kib)

    def read_lines(self, path: str) -> Iterator[str]:
        try:
            with open(path, encoding="utf-8", errors="replace") as stream:
                yield from stream
        except FileNotFoundError:
            return

    @contextmanager
    def scratch(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="kvmkit-bench-", dir=self.tmp_root) as path:
            yield path

    def claim(self, path: str, filled_bytes: int | None = None) -> None:
        """Create the file if needed and record in an xattr that it is kvmkit's and how much is filled."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if filled_bytes is None and _get_xattr(fd) is not None:
                return  # already ours: keep the recorded fill
            os.setxattr(fd, OWNER_XATTR, str(filled_bytes or 0).encode())
        except OSError:
            pass  # no user xattrs on this filesystem: the next run will have to say --destructive
        finally:
            os.close(fd)

    def remove(self, path: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(path)


def _get_xattr(fd: int) -> bytes | None:
    try:
        return os.getxattr(fd, OWNER_XATTR)
    except OSError:
        return None
