"""QEMU processes: recognised from their names alone (pure), and found by one scan of /proc (the edge).

libvirt starts QEMU with `-name guest=NAME,debug-threads=on`, so /proc is enough to find every VM and name it;
no libvirt connection is needed to measure.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from kvmkit.sampling.procfiles import read_small

QEMU_COMM = "qemu-system"  # what a QEMU renamed with `-name process=…` is remembered as


def is_qemu(comm: str, exe_name: str | None = None) -> bool:
    """True for a QEMU system emulator; the kernel truncates comm to 15 characters, so match a prefix."""
    return any(name.startswith("qemu-system") or name == "qemu-kvm" for name in (comm, exe_name or ""))


def split_qemu_opts(value: str) -> list[str]:
    """Split a QEMU option string on commas; `,,` is an escaped literal comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "," and value[i + 1 : i + 2] == ",":
            current.append(",")
            i += 2
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def qemu_option(argv: list[str], option: str) -> str | None:
    """The value of the first `-OPTION VALUE` or `-OPTION=VALUE` (one dash or two) on a QEMU command line."""
    for i, arg in enumerate(argv):
        if arg in (f"-{option}", f"--{option}") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith((f"-{option}=", f"--{option}=")):
            return arg.split("=", 1)[1]
    return None


def domain_from_cmdline(argv: list[str]) -> str | None:
    """The guest name from `-name guest=NAME,...` (or the implied form `-name NAME,...`); None if absent."""
    value = qemu_option(argv, "name")
    if value is None:
        return None
    for position, part in enumerate(split_qemu_opts(value)):
        key, sep, val = part.partition("=")
        if sep and key == "guest" and val:
            return val
        if not sep and position == 0 and key:
            return key
    return None


class Scan(NamedTuple):
    qemu: list[int]  # QEMU pids, ascending
    others: dict[int, str]  # every other live process: pid → comm (congestion looks for vhost workers here)
    gone: list[int]  # pids forgotten since the previous scan (exited, or reused by a new process)


class ProcessNames:
    """The comm of every live process, read once per process: the cache is keyed by the inode of /proc/PID,
    which changes when a pid is reused, so a recycled pid is looked at afresh. Bounded by the live processes.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._comm: dict[int, tuple[int, str, bool]] = {}  # live pid → (inode of /proc/PID, comm, is QEMU)

    def comm(self, pid: int) -> str | None:
        """The cached comm of a pid seen by the last scan."""
        known = self._comm.get(pid)
        return known[1] if known else None

    def scan(self) -> Scan:
        """One pass over /proc. A QEMU whose comm was renamed but whose exe is QEMU reads as QEMU_COMM; a process
        that exits between the listing and the read is left out."""
        with os.scandir(self._proc) as entries:
            live = {int(e.name): e.inode() for e in entries if e.name.isdigit()}
        gone = [p for p, (ino, _, _) in self._comm.items() if live.get(p) != ino]
        for pid in gone:
            del self._comm[pid]
        qemu: list[int] = []
        others: dict[int, str] = {}
        for pid, ino in live.items():
            known = self._comm.get(pid)
            if known is None:
                try:
                    comm = read_small(f"{self._proc}/{pid}/comm").rstrip("\n")
                except OSError:
                    continue  # exited between listdir and read: not ours to report
                if not is_qemu(comm):
                    try:
                        exe = os.path.basename(os.readlink(f"{self._proc}/{pid}/exe"))
                    except OSError:
                        exe = None  # kernel threads have no exe
                    if is_qemu(comm, exe):
                        comm = QEMU_COMM
                known = (ino, comm, is_qemu(comm))
                self._comm[pid] = known
            if known[2]:
                qemu.append(pid)
            else:
                others[pid] = known[1]
        return Scan(sorted(qemu), others, gone)
