"""Small parsers and readers of kernel files that only congestion reads: CPU lists, /proc/stat ticks, the
cgroup cpu controller's throttling counters (the shared ones — PSI, mounts, /proc/PID/cgroup, reading a file —
are in kvmkit.sampling.procfiles).

Every function here either parses text it is given or reads well-known files, and raises OSError subclasses for
the caller to turn into a Skip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kvmkit.sampling.procfiles import proc_cgroup, read_small


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
    return proc_cgroup(text, "cpu")


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
