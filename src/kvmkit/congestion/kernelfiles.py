"""Small parsers and readers of kernel files (procfs, sysfs, cgroupfs) that are not about one QEMU thread.

Kept apart from `procfs` (which walks QEMU processes) so each stays small; every function here either parses
text it is given or reads one well-known file, and raises OSError subclasses for the caller to turn into a Skip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from kvmkit.congestion.model import PsiReading


def read_small(path: str) -> str:
    """One small procfs/sysfs file; raises OSError subclasses as they come (callers decide what they mean)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode(errors="replace")
    finally:
        os.close(fd)


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


def parse_cpu_list(text: str) -> frozenset[int]:
    """`0-3,8,10-11` → {0, 1, 2, 3, 8, 10, 11}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """/proc/PID/cgroup → (v2 path, v1 cpu-controller path)."""
    v2 = v1_cpu = None
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1_cpu = path
    return v2, v1_cpu


def vm_cgroup(path: str) -> str:
    """libvirt puts the QEMU main thread in <vm>/emulator (vCPUs in <vm>/vcpuN): the VM is the parent."""
    stripped = path.rstrip("/")
    if stripped.rsplit("/", 1)[-1] == "emulator":
        return stripped.rsplit("/", 1)[0] or "/"
    return path


@dataclass(frozen=True, slots=True)
class CgroupMounts:
    v2: str | None
    v1_cpu: str | None

    @classmethod
    def from_mounts(cls, text: str) -> CgroupMounts:
        v2 = v1 = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            if fields[2] == "cgroup2" and v2 is None:
                v2 = fields[1]
            elif fields[2] == "cgroup" and "cpu" in fields[3].split(","):
                v1 = fields[1]
        return cls(v2, v1)


def core_ticks(cores: Sequence[int]) -> tuple[int, int, int]:
    """(busy, total, lost) USER_HZ ticks of the given cores from /proc/stat; lost = irq + softirq + steal.

    For the benches: which part of a core went to other tenants and to the hypervisor below.
    """
    busy = total = lost = 0
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
                total += user + nice + system + idle + iowait + irq + softirq + steal
                busy += user + nice + system + irq + softirq + steal
                lost += irq + softirq + steal
    return busy, total, lost


def throttling(directory: str, key: str, ns_per_unit: int) -> tuple[int, int, int] | None:
    """(periods, throttled periods, throttled ns) summed over the VM's cgroup and its children.

    libvirt applies vcpu_quota in <vm>/vcpuN and emulator_quota in <vm>/emulator, and a cgroup's cpu.stat
    counts only its own quota, so the VM's throttling is the sum over the folder and its sub-folders.
    """
    try:
        folders = [directory] + [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return None
    total = [0, 0, 0]
    found = False
    for folder in folders:
        try:
            stat = dict(line.split() for line in read_small(f"{folder}/cpu.stat").splitlines())
            values = (int(stat["nr_periods"]), int(stat["nr_throttled"]), int(stat[key]) * ns_per_unit)
        except (OSError, KeyError, ValueError):
            continue  # v2 cpu.stat without the cpu controller, or a child that just went away
        found = True
        total = [t + v for t, v in zip(total, values, strict=True)]
    return (total[0], total[1], total[2]) if found else None
