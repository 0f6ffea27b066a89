"""Reading small kernel files (procfs, sysfs, cgroupfs) and parsing the few formats both collectors read.

Every reader here raises OSError subclasses as they come: a file that vanished (a VM stopped) or is missing (a
kernel without PSI) means something different to each caller, which turns it into a Skip or a null reason.
The parsers are pure: text in, values out, ValueError/KeyError on text they do not understand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def read_small(path: str) -> str:
    """One small procfs/sysfs file (at most 64 KiB, one read)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode(errors="replace")
    finally:
        os.close(fd)


def read_large(path: str, limit: int = 16 << 20) -> str:
    """A procfs file that may exceed one read (smaps: ~1 kB per mapping), bounded at `limit` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(fd)


class KeptFiles:
    """Descriptors kept open per file and re-read with one pread: procfs and kernfs regenerate a file at offset 0,
    so a collector that reads the same files every second saves the open and close.

    At most `budget` descriptors are kept (beyond it files are read the plain way); `prune` closes those not read
    since the previous prune, so what is kept follows the live VMs and threads. A read of a file whose task is
    gone fails (ESRCH/ENOENT) even if its id was reused, and that descriptor is dropped.
    """

    def __init__(self, budget: int, size: int = 65536) -> None:
        self._fds: dict[str, int] = {}
        self._budget = budget
        self._size = size
        self.used: set[str] = set()

    def read(self, path: str, keep: bool = True) -> str:
        """The file's text; `keep=False` reads it without keeping a descriptor (a file that may change meaning).

        This runs for every thread of every VM every second: callers that re-read a file pass the same string
        object each round (its hash is cached), and nothing here allocates beyond the text.
        """
        self.used.add(path)
        fd = self._fds.get(path)
        if fd is None:
            if not keep or len(self._fds) >= self._budget:
                return read_small(path)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._fds[path] = fd
        try:
            return os.pread(fd, self._size, 0).decode("utf-8", "replace")
        except OSError:
            os.close(self._fds.pop(path))
            raise

    def prune(self) -> None:
        """Close the descriptors of files not read since the last prune."""
        for path in self._fds.keys() - self.used:
            os.close(self._fds.pop(path))
        self.used = set()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __len__(self) -> int:
        return len(self._fds)


@dataclass(frozen=True, slots=True)
class PsiReading:
    """One line pair of a PSI file: averages in percent, totals in microseconds."""

    some_avg10: float
    some_avg60: float
    some_total_us: int
    full_avg10: float | None
    full_total_us: int | None


def parse_psi(text: str) -> PsiReading:
    """`some avg10=… avg60=… avg300=… total=…` (+ an optional `full` line) → PsiReading."""
    lines: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        lines[kind] = dict(field.split("=", 1) for field in rest.split())
    some = lines["some"]
    full = lines.get("full")
    return PsiReading(
        some_avg10=float(some["avg10"]),
        some_avg60=float(some["avg60"]),
        some_total_us=int(some["total"]),
        full_avg10=float(full["avg10"]) if full else None,
        full_total_us=int(full["total"]) if full else None,
    )


@dataclass(frozen=True, slots=True)
class CgroupMounts:
    """Where the cgroup v2 tree is mounted, and the v1 hierarchy holding one controller (cpu, memory).

    Hosts are v2, v1 or hybrid (v2 mounted beside v1 hierarchies, the controllers on v1): callers try both.
    """

    v2: str | None
    v1: str | None

    @classmethod
    def from_mounts(cls, text: str, controller: str) -> CgroupMounts:
        """/proc/self/mounts → the two mount points (None where absent)."""
        v2 = v1 = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            if fields[2] == "cgroup2" and v2 is None:
                v2 = fields[1]
            elif fields[2] == "cgroup" and controller in fields[3].split(","):
                v1 = fields[1]
        return cls(v2, v1)


def proc_cgroup(text: str, controller: str) -> tuple[str | None, str | None]:
    """/proc/PID/cgroup → (v2 path, path in the v1 hierarchy holding `controller`)."""
    v2 = v1 = None
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            v2 = path
        elif controller in controllers.split(","):
            v1 = path
    return v2, v1


def vm_cgroup(path: str) -> str:
    """libvirt puts the QEMU main thread in <vm>/emulator (vCPUs in <vm>/vcpuN): the VM is the parent."""
    stripped = path.rstrip("/")
    if stripped.rsplit("/", 1)[-1] == "emulator":
        return stripped.rsplit("/", 1)[0] or "/"
    return path
