"""A SYNTHETIC /proc + /sys + cgroup tree for the memory collector: N QEMU-looking processes as plain files.

Used for the collector's cost at fleet scale (500 VMs on a 2-core lab host is not possible for real) and by the
tests for host layouts this machine does not have (cgroup v2 with the memory controller, pure v1, no PSI, no
KSM, swap). Everything written here is labelled synthetic by whoever reports a figure measured on it: regular
files are cheaper to read than procfs files the kernel generates (smaps walks page tables), so the bench also
measures the real per-VM cost on live QEMU processes and extrapolates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Layout = Literal["hybrid", "v2", "v1"]
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20

_SMAPS_BLOCK = """{start:012x}-{end:012x} rw-p 00000000 00:00 0 {name}
Size:           {size_kb:8d} kB
KernelPageSize:        {kps} kB
MMUPageSize:           {kps} kB
Rss:            {rss_kb:8d} kB
Pss:            {rss_kb:8d} kB
Private_Dirty:  {rss_kb:8d} kB
AnonHugePages:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:{huge_kb:8d} kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac
"""


@dataclass(frozen=True)
class SynthVm:
    pid: int
    domain: str
    memory_mib: int
    rss_mib: int
    guest_rss_mib: int
    hugepages: bool = False


@dataclass(frozen=True)
class SynthHost:
    root: Path
    layout: Layout
    vms: tuple[SynthVm, ...]

    @property
    def proc(self) -> str:
        return str(self.root / "proc")

    @property
    def sys(self) -> str:
        return str(self.root / "sys")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _smaps(vm: SynthVm, mappings: int) -> str:
    blocks = []
    guest_kb = vm.guest_rss_mib * 1024
    base = 0x7F0000000000
    blocks.append(_SMAPS_BLOCK.format(start=base, end=base + vm.memory_mib * MIB, name="", size_kb=vm.memory_mib * 1024,
                                      kps=2048 if vm.hugepages else 4, rss_kb=0 if vm.hugepages else guest_kb,
                                      huge_kb=guest_kb if vm.hugepages else 0))  # fmt: skip
    rest_kb = max(0, (vm.rss_mib - (0 if vm.hugepages else vm.guest_rss_mib)) * 1024)
    for i in range(mappings - 1):  # the rest of QEMU: libraries, heap, translation cache
        share = rest_kb // (mappings - 1) + (rest_kb % (mappings - 1) if i == 0 else 0)
        start = base + (vm.memory_mib + 2 + i) * MIB
        blocks.append(_SMAPS_BLOCK.format(start=start, end=start + 4 * MIB, name=f"/usr/lib/lib{i}.so", size_kb=4096,
                                          kps=4, rss_kb=share, huge_kb=0))  # fmt: skip
    return "".join(blocks)


def build(root: Path, vms: int, *, layout: Layout = "hybrid", swap: bool = False, ksm: bool = True,
          psi: bool = True, smaps_mappings: int = 40, hugepages: bool = False) -> SynthHost:
    """Write the tree; VMs are 1024 MiB each with 600 MiB resident guest RAM and 150 MiB of QEMU overhead."""
    root.mkdir(parents=True, exist_ok=True)
    proc, sys, cg = root / "proc", root / "sys", root / "cgroup"
    mounts = []
    if layout in ("hybrid", "v2"):
        mounts.append(f"cgroup2 {cg}/unified cgroup2 rw,relatime 0 0")
    if layout in ("hybrid", "v1"):
        mounts.append(f"cgroup {cg}/memory cgroup rw,relatime,memory 0 0")
    _write(proc / "self" / "mounts", "\n".join(mounts) + "\n")
    swap_kb = 4 << 20 if swap else 0
    _write(proc / "meminfo", f"MemTotal: {256 << 20} kB\nMemFree: {100 << 20} kB\nMemAvailable: {120 << 20} kB\n"
           f"SwapTotal: {swap_kb} kB\nSwapFree: {swap_kb // 2} kB\nAnonHugePages: 0 kB\nHugePages_Total: 0\n"
           f"HugePages_Free: 0\nHugepagesize: 2048 kB\n")  # fmt: skip
    _write(proc / "vmstat", "pgmajfault 10\npswpin 100\npswpout 200\n")
    if psi:
        _write(proc / "pressure" / "memory", "some avg10=1.50 avg60=0.50 avg300=0.10 total=1000\n"
               "full avg10=0.50 avg60=0.10 avg300=0.00 total=400\n")  # fmt: skip
    if ksm:
        for name, value in (("run", 1), ("pages_sharing", 2560), ("pages_shared", 10), ("ksm_zero_pages", 0)):
            _write(sys / "kernel" / "mm" / "ksm" / name, f"{value}\n")
        _write(proc / "2" / "comm", "ksmd\n")
        _write(proc / "2" / "schedstat", "1000000 0 1\n")
    _write(sys / "module" / "zswap" / "parameters" / "enabled", "N\n")
    out = []
    for i in range(vms):
        pid = 1000 + i
        vm = SynthVm(pid, f"synth-{i:04d}", 1024, 750, 600, hugepages)
        out.append(vm)
        base = proc / str(pid)
        _write(base / "comm", "qemu-system-x86\n")
        argv = ["/usr/bin/qemu-system-x86_64", "-name", f"guest={vm.domain},debug-threads=on", "-m", "1024"]
        _write(base / "cmdline", "\0".join(argv) + "\0")
        rss_pages = vm.rss_mib * MIB // PAGE
        _write(base / "stat", f"{pid} (qemu-system-x86) S 1 1 1 0 -1 0 0 0 5 0 1 1 0 0 20 0 5 0 1 1 {rss_pages} "
               + "0 " * 30 + "\n")  # fmt: skip
        _write(base / "smaps", _smaps(vm, smaps_mappings))
        group = f"/machine/qemu-{i}-{vm.domain}.libvirt-qemu"
        lines = []
        if layout in ("hybrid", "v1"):
            lines.append(f"4:memory:{group}")
            v1 = cg / "memory" / group.lstrip("/")
            _write(v1 / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
            _write(v1 / "memory.failcnt", "0\n")
            _write(v1 / "memory.stat", "cache 0\nrss 0\nworkingset_refault_anon 7\n")
        if layout in ("hybrid", "v2"):
            lines.append(f"0::{group}/emulator")
            v2 = cg / "unified" / group.lstrip("/")
            if psi:
                _write(v2 / "memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                       "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")  # fmt: skip
            if layout == "v2":
                _write(v2 / "memory.events", "low 0\nhigh 3\nmax 1\noom 0\noom_kill 0\noom_group_kill 0\n")
                _write(v2 / "memory.stat", "anon 0\nfile 0\npswpin 9\nworkingset_refault_anon 7\n")
        else:
            lines.append("0::/")
        _write(base / "cgroup", "\n".join(lines) + "\n")
    return SynthHost(root, layout, tuple(out))


def advance(host: SynthHost, seconds: float = 1.0) -> None:
    """Move the cumulative counters as a VM under pressure would: faults, PSI totals, ksmd CPU, swap-ins."""
    vmstat = host.root / "proc" / "vmstat"
    counts = dict(line.split() for line in vmstat.read_text().splitlines())
    counts["pswpin"] = str(int(counts["pswpin"]) + int(256 * seconds))
    vmstat.write_text("".join(f"{k} {v}\n" for k, v in counts.items()))
    ksmd = host.root / "proc" / "2" / "schedstat"
    if ksmd.exists():
        run = int(ksmd.read_text().split()[0])
        ksmd.write_text(f"{run + int(0.05 * seconds * 1e9)} 0 1\n")
    for vm in host.vms:
        stat = host.root / "proc" / str(vm.pid) / "stat"
        head, _, tail = stat.read_text().rpartition(")")
        fields = tail.split()
        fields[9] = str(int(fields[9]) + int(10 * seconds))
        stat.write_text(f"{head}) {' '.join(fields)}\n")
        pressure = host.root / "cgroup" / "unified" / "machine" / f"qemu-{vm.pid - 1000}-{vm.domain}.libvirt-qemu"
        psi = pressure / "memory.pressure"
        if psi.exists():
            total = int(psi.read_text().split("total=")[1].split()[0]) + int(0.2 * seconds * 1e6)
            psi.write_text(f"some avg10=20.00 avg60=5.00 avg300=1.00 total={total}\n"
                           f"full avg10=10.00 avg60=2.00 avg300=0.50 total={total // 2}\n")  # fmt: skip
