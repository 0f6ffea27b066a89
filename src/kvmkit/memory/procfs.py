"""Reading /proc, /sys and cgroup files into memory `Reading`s: the only module of the collector that reads files.

Anything can vanish (a VM stops) or be missing (no swap, no KSM, no PSI, cgroup v1 or hybrid layouts): each such
field gets a reason in the reading and the reading goes on. `proc` and `sys` are parameters so the bench can point
the reader at a synthetic tree.

Cost (500 VMs at 1 Hz must stay under 1 % of a core): per VM and round, /proc/PID/stat (RSS and major faults in
one file) and the cgroup's memory.pressure are re-read with one pread each through descriptors kept open; the OOM
and limit-hit counters every EVENTS_EVERY rounds; a file found missing is not looked for again. smaps (the
guest-RAM/overhead split: the kernel walks the page tables and writes ~450 kB for a QEMU, ~4-7 ms) is refreshed
only every `split_max_age_s` per VM (default 10 min, staggered by pid) and at most `split_budget` VMs per round,
so a 500-VM host's first splits arrive over minutes instead of costing seconds in one round. Caches are pruned to
the live VMs every round.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from kvmkit.memory import parse
from kvmkit.memory.model import (
    BalloonReading,
    CgroupMemReading,
    HostReading,
    KsmReading,
    RamSplit,
    Reading,
    VmReading,
)
from kvmkit.sampling.procfiles import (
    CgroupMounts,
    KeptFiles,
    PsiReading,
    parse_psi,
    proc_cgroup,
    read_small,
    vm_cgroup,
)
from kvmkit.sampling.procfiles import read_large as read_small_large  # the name kvmkit.benchmarks.memory uses
from kvmkit.sampling.qemu import ProcessNames, domain_from_cmdline

_GONE = (FileNotFoundError, ProcessLookupError)
EVENTS_EVERY = 5  # OOM kills and limit hits are counters an operator reads over minutes: every 5th round is plenty
BalloonSource = Callable[[], dict[str, BalloonReading]]


def proc_cgroup_memory(text: str) -> tuple[str | None, str | None]:
    """/proc/PID/cgroup → (v2 path, v1 memory-controller path)."""
    return proc_cgroup(text, "memory")


@dataclass(slots=True)
class _VmFacts:
    """What does not change while a QEMU process lives, read once per pid: its name, size and which cgroup files
    exist (a missing file is looked for once, not every round)."""

    domain: str
    configured_bytes: int | None
    configured_reason: str | None
    cgroup_path: str | None
    cgroup_reason: str | None
    psi: str | None = None  # cgroup v2 memory.pressure
    events: str | None = None  # cgroup v2 memory.events (memory controller on v2)
    oom_control: str | None = None  # cgroup v1 memory.oom_control (hybrid and v1 hosts)
    failcnt: str | None = None
    stat: str | None = None  # memory.stat of whichever hierarchy holds the memory controller
    ksm: bool = True  # /proc/PID/ksm_merging_pages exists
    pid: int = 0
    counters: tuple[int | None, int | None, int | None] | None = None  # last (oom_kill, high, max) read


class MemReader:
    """Reads the host and every QEMU process (or the given pids) into a Reading."""

    def __init__(
        self,
        proc: str = "/proc",
        sys: str = "/sys",
        pids: Collection[int] | None = None,
        balloons: BalloonSource | None = None,
        balloon_reason: str = "libvirt not asked (no --uri)",
        split_max_age_s: float = 600.0,
        split_budget: int | None = 2,
        events_every: int = EVENTS_EVERY,
    ) -> None:
        self._proc, self._sys = proc, sys
        # given pids are read in the given order, repeats included (the bench reads a few real VMs 500 times a round)
        self._pids = tuple(pids) if pids is not None else None
        self._balloons = balloons
        self.balloon_reason = balloon_reason
        self._split_max_age_ns = int(split_max_age_s * 1e9)
        self._split_budget = split_budget  # smaps reads per round (None: as many as are due)
        self._splits_left: int | None = None
        self._round = 0
        self._events_every = max(1, events_every)
        self._names = ProcessNames(proc)
        self._facts: dict[int, _VmFacts] = {}
        self._splits: dict[int, RamSplit] = {}
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._fds = KeptFiles(max(0, soft // 2 - 64))
        self._page = os.sysconf("SC_PAGE_SIZE")
        try:
            self._mounts = CgroupMounts.from_mounts(read_small(f"{proc}/self/mounts"), "memory")
        except OSError:
            self._mounts = CgroupMounts(None, None)
        self._ksmd = self._find_ksmd()

    @property
    def cached(self) -> int:
        """Per-VM entries kept between rounds (tests check they follow the live VMs)."""
        return max(len(self._facts), len(self._splits))

    @property
    def open_files(self) -> int:
        """Descriptors kept open: at most four per live VM (stat, PSI, OOM counter, failcnt) plus ksmd's."""
        return len(self._fds)

    def close(self) -> None:
        self._fds.close()

    def __del__(self) -> None:
        if hasattr(self, "_fds"):
            self._fds.close()

    def __enter__(self) -> MemReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- host -------------------------------------------------------------------------------

    def _find_ksmd(self) -> int | None:
        try:
            with os.scandir(self._proc) as entries:
                for entry in entries:
                    if entry.name.isdigit():
                        try:
                            if read_small(f"{entry.path}/comm").strip() == "ksmd":
                                return int(entry.name)
                        except OSError:
                            continue
        except OSError:
            return None
        return None

    def _host(self, mono: int, wall: float) -> HostReading:
        reasons: dict[str, str] = {}
        try:
            meminfo = parse.meminfo(read_small(f"{self._proc}/meminfo"))
        except (OSError, ValueError) as exc:
            meminfo = {}
            reasons["ram_bytes"] = f"/proc/meminfo unreadable: {exc}"
        pswpin = pswpout = None
        try:
            vmstat = parse.key_values(read_small(f"{self._proc}/vmstat"))
            pswpin, pswpout = vmstat.get("pswpin"), vmstat.get("pswpout")
        except OSError as exc:
            reasons["swap_in_bytes_per_s"] = f"/proc/vmstat unreadable: {exc.strerror}"
        psi: PsiReading | None = None
        try:
            psi = parse_psi(read_small(f"{self._proc}/pressure/memory"))
        except (OSError, KeyError, ValueError) as exc:
            reasons["psi_some_avg10"] = f"/proc/pressure/memory unreadable ({exc}): kernel without PSI, or psi=0"
        ksm: KsmReading | None = None
        base = f"{self._sys}/kernel/mm/ksm"
        try:
            files = {n: read_small(f"{base}/{n}") for n in ("run", "pages_sharing", "pages_shared")}
            try:
                files["ksm_zero_pages"] = read_small(f"{base}/ksm_zero_pages")
            except OSError:
                pass  # before 6.x: zero-page merges are not counted apart
            ksm = parse.ksm(files)
        except (OSError, ValueError) as exc:
            reasons["ksm_saved_bytes"] = f"kernel without KSM ({base}: {getattr(exc, 'strerror', exc)})"
        ksmd_ns = None
        if ksm is not None:
            try:
                if self._ksmd is None:
                    raise FileNotFoundError("no ksmd thread")
                ksmd_ns = parse.schedstat_run_ns(self._fds.read(f"{self._proc}/{self._ksmd}/schedstat"))
            except (OSError, ValueError) as exc:
                reasons["ksm_cpu_pct"] = f"ksmd CPU time unreadable: {exc}"
        try:
            zswap: bool | None = read_small(f"{self._sys}/module/zswap/parameters/enabled").strip() in ("Y", "1")
        except OSError:
            zswap = None
        return HostReading(mono, wall, self._page, meminfo, pswpin, pswpout, psi, ksm, ksmd_ns, zswap, reasons)

    # ---- VMs --------------------------------------------------------------------------------

    def _discover(self) -> list[int]:
        if self._pids is not None:
            return list(self._pids)
        return self._names.scan().qemu

    def _vm_facts(self, pid: int) -> _VmFacts:
        facts = self._facts.get(pid)
        if facts is not None:
            return facts
        argv = read_small(f"{self._proc}/{pid}/cmdline").split("\0")
        domain = domain_from_cmdline(argv) or f"pid-{pid}"
        configured = reason = None
        program = os.path.basename(argv[0]) if argv and argv[0] else ""
        try:
            configured = parse.qemu_memory_bytes(argv)
            if configured is None and "qemu" in program:
                configured = 128 << 20  # QEMU's default when -m is absent
            elif configured is None:  # --pid of something else: its size is not a VM's, and not guessed
                reason = f"pid {pid} is not a QEMU process ({program or 'no command line'}): no VM size"
        except ValueError as exc:
            reason = str(exc)
        try:
            v2, v1 = proc_cgroup_memory(read_small(f"{self._proc}/{pid}/cgroup"))
            cg_reason = None
        except OSError as exc:
            v2 = v1 = None
            cg_reason = f"/proc/{pid}/cgroup unreadable: {exc.strerror}"
        facts = _VmFacts(domain, configured, reason, None, cg_reason, pid=pid)
        exists = os.path.exists
        if v2 is not None and self._mounts.v2 is not None and vm_cgroup(v2) != "/":
            facts.cgroup_path = vm_cgroup(v2)
            v2_dir = self._mounts.v2 + facts.cgroup_path
            facts.psi = f"{v2_dir}/memory.pressure" if exists(f"{v2_dir}/memory.pressure") else None
            if exists(f"{v2_dir}/memory.events"):
                facts.events, facts.stat = f"{v2_dir}/memory.events", f"{v2_dir}/memory.stat"
            if facts.psi is None:
                facts.cgroup_reason = f"{v2_dir}/memory.pressure missing (kernel without PSI, or cgroup.pressure=0)"
        elif cg_reason is None:
            facts.cgroup_reason = "VM in the root cgroup v2 (or no cgroup v2 mounted): no per-VM memory PSI"
        if facts.events is None and v1 is not None and self._mounts.v1 is not None and vm_cgroup(v1) != "/":
            v1_dir = self._mounts.v1 + vm_cgroup(v1)
            facts.cgroup_path = facts.cgroup_path or vm_cgroup(v1)
            facts.oom_control, facts.failcnt = f"{v1_dir}/memory.oom_control", f"{v1_dir}/memory.failcnt"
            facts.stat = f"{v1_dir}/memory.stat"
        facts.ksm = exists(f"{self._proc}/{pid}/ksm_merging_pages")
        self._facts[pid] = facts
        return facts

    def _cgroup(self, facts: _VmFacts, swap: bool, reasons: dict[str, str]) -> CgroupMemReading | None:
        if facts.psi is None and facts.events is None and facts.oom_control is None:
            for name in ("psi_some_pct", "psi_full_pct", "oom_events"):
                reasons[name] = facts.cgroup_reason or "no memory cgroup"
            return None
        some = full = None
        if facts.psi is not None:
            try:
                some, full = parse.psi_totals(self._fds.read(facts.psi))
            except (OSError, ValueError) as exc:
                reasons["psi_some_pct"] = f"{facts.psi} unreadable: {exc}"
        else:
            reasons["psi_some_pct"] = facts.cgroup_reason or "no cgroup v2 memory.pressure"
        oom = high = max_ = None
        if facts.counters is not None and (self._round + facts.pid) % self._events_every:
            oom, high, max_ = facts.counters  # event counters: re-read every `events_every` rounds (staggered)
        elif facts.events is not None:  # the memory controller is on cgroup v2
            events = self._try(facts.events) or ""
            oom, high, max_ = (parse.counter(events, name) for name in ("oom_kill", "high", "max"))
        elif facts.oom_control is not None:  # hybrid or v1: the memory controller is a v1 hierarchy
            oom = parse.counter(self._try(facts.oom_control) or "", "oom_kill")
            failcnt = self._try(facts.failcnt) if facts.failcnt else None
            max_ = int(failcnt) if failcnt is not None and failcnt.strip().isdigit() else None
        if facts.oom_control is not None and facts.events is None:
            reasons["memory_high_events"] = "cgroup v1 memory controller: no memory.high"
        facts.counters = (oom, high, max_)
        if oom is None:
            reasons["oom_events"] = "no memory controller for the VM's cgroup (neither v2 memory.events nor v1)"
        swap_in = source = None
        if swap and facts.stat is not None:
            stat = self._try(facts.stat) or ""
            if (value := parse.counter(stat, "pswpin")) is not None:
                swap_in, source = value, "memory.stat pswpin"
            elif (value := parse.counter(stat, "workingset_refault_anon")) is not None:
                swap_in, source = value, "memory.stat workingset_refault_anon (estimate)"
            else:
                reasons["swap_in_bytes_per_s"] = f"{facts.stat} has no swap-in counter"
        elif swap:
            reasons["swap_in_bytes_per_s"] = "no memory controller for the VM's cgroup"
        return CgroupMemReading(facts.cgroup_path, some, full, oom, high, max_, swap_in, source)

    def _try(self, path: str) -> str | None:
        try:
            return self._fds.read(path)
        except OSError:
            return None

    def _split(self, pid: int, configured: int | None, now: int, reasons: dict[str, str]) -> RamSplit | None:
        split = self._splits.get(pid)
        stagger = self._split_max_age_ns * (0.75 + 0.5 * (pid % 97) / 97)
        if split is not None and now - split.mono_ns < stagger:
            return split
        if self._splits_left is not None:
            if self._splits_left <= 0:  # this round's smaps budget is spent: the previous split (or none) stands
                if split is None:
                    reasons["overhead_bytes"] = "smaps not read yet (a few VMs per round, to bound the cost)"
                return split
            self._splits_left -= 1
        try:
            split = parse.ram_split(read_small_large(f"{self._proc}/{pid}/smaps"), configured, now)
        except (OSError, ValueError) as exc:
            reasons["overhead_bytes"] = f"/proc/{pid}/smaps unreadable: {exc}"
            return None
        self._splits[pid] = split
        return split

    def _vm(
        self, pid: int, now: int, swap: bool, balloons: dict[str, BalloonReading] | None, ksm: bool
    ) -> VmReading | None:
        try:
            facts = self._vm_facts(pid)
            stat = self._fds.read(f"{self._proc}/{pid}/stat")
        except _GONE:
            return None
        except OSError:
            return None  # not ours to read (permissions): nothing to say about it
        if stat.rsplit(")", 1)[-1].split()[:1] in (["Z"], ["X"]):
            return None  # exited, not yet reaped
        reasons: dict[str, str] = {}
        if facts.configured_reason:
            reasons["configured_bytes"] = facts.configured_reason
        fields = stat.rsplit(")", 1)[1].split()
        rss, majflt = int(fields[21]) * self._page, int(fields[9])
        split = self._split(pid, facts.configured_bytes, now, reasons)
        cgroup = self._cgroup(facts, swap, reasons)
        balloon = None
        if balloons is None:
            reasons["balloon_bytes"] = self.balloon_reason
        else:
            balloon = balloons.get(facts.domain)
            if balloon is None:
                reasons["balloon_bytes"] = "not a running libvirt domain of this connection"
        merging = None
        if ksm and facts.ksm:  # only while KSM has merged something: one more read per VM otherwise wasted
            text = self._try(f"{self._proc}/{pid}/ksm_merging_pages")
            merging = int(text) if text is not None and text.strip().isdigit() else None
        return VmReading(pid, facts.domain, facts.configured_bytes, rss, majflt, split, cgroup, balloon, reasons,
                         merging)

    def read(self) -> Reading:
        mono, wall = time.monotonic_ns(), time.time()
        host = self._host(mono, wall)
        swap = host.meminfo.get("SwapTotal", 0) > 0
        balloons = None
        if self._balloons is not None:
            try:
                balloons = self._balloons()
            except Exception as exc:  # libvirt's errors: the balloon figures become nulls, the rest goes on
                self.balloon_reason = f"libvirt unreadable: {exc}"
        ksm = host.ksm is not None and host.ksm.pages_shared > 0
        vms: list[VmReading] = []
        self._round += 1
        self._splits_left = self._split_budget
        for pid in self._discover():
            vm = self._vm(pid, mono, swap, balloons, ksm)
            if vm is not None:
                vms.append(vm)
        live = {vm.pid for vm in vms}
        self._facts = {p: f for p, f in self._facts.items() if p in live}
        self._splits = {p: s for p, s in self._splits.items() if p in live}
        if self._ksmd is not None:
            self._fds.used.add(f"{self._proc}/{self._ksmd}/schedstat")
        self._fds.prune()
        return Reading(host, tuple(vms))

