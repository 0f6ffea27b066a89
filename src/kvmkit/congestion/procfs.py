"""Reading /proc and cgroup files into `Reading`s: the only module of the collector that does I/O.

Everything here can vanish under our feet (a VM stops, a thread exits) or be unreadable (permissions, a
kernel without PSI or schedstat). Each such case becomes a `Skip` with a reason and the reading goes on.

Cost matters (500 threads at 1 Hz must stay under 1 % of a core), so: thread names are cached per (pid,
tid), the schedstat file of each named thread is kept open and re-read with one pread, process names are
cached per pid; all of it is pruned to the live tasks every round, and nothing else is kept between rounds.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Collection

from kvmkit.congestion.classify import classify_thread, vhost_owner
from kvmkit.congestion.kernelfiles import parse_cpu_list, parse_proc_cgroup, throttling
from kvmkit.congestion.model import (
    CgroupReading,
    CpuTimes,
    Reading,
    Skip,
    ThreadClass,
    ThreadKind,
    ThreadReading,
    VmReading,
)
from kvmkit.sampling.procfiles import CgroupMounts, KeptFiles, parse_psi, read_small, vm_cgroup
from kvmkit.sampling.qemu import ProcessNames, domain_from_cmdline

_GONE = (FileNotFoundError, ProcessLookupError)


def _schedstat(text: str) -> tuple[int, int]:
    run, wait, _ = text.split(maxsplit=2)
    return int(run), int(wait)


def _last_cpu(stat: str) -> int | None:
    """Field 39 (processor) of /proc/…/stat; the comm field may contain spaces, so count from the last ')'."""
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[36]) if len(fields) > 36 else None


class ProcReader:
    """Reads every QEMU process (or the given pids) into a Reading. Keeps only name caches of live tasks."""

    def __init__(self, proc: str = "/proc", sys: str = "/sys", pids: Collection[int] | None = None) -> None:
        self._proc = proc
        self._sys = sys
        self._pids = frozenset(pids) if pids is not None else None
        self._names = ProcessNames(proc)  # live pid → comm, pruned each round
        self._domain: dict[int, str] = {}  # QEMU pid → domain name
        self._thread: dict[tuple[int, int], tuple[str, ThreadClass, str]] = {}  # → (name, class, schedstat path)
        # vCPU thread → (its cgroup's cpu.stat, counter, ns per unit); ("", "", 0) in the root cgroup; None unknown
        self._vcpu_cgroup: dict[tuple[int, int], tuple[str, str, int] | None] = {}
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # kept schedstat descriptors of named threads; leave room for everything else the process opens
        self._files = KeptFiles(max(0, soft // 2 - 64), size=256)
        self._mounts = self._read_mounts()
        self._nodes = self._read_numa()
        self._has_schedstat = os.path.exists(f"{proc}/self/schedstat")

    @property
    def cached_threads(self) -> int:
        """Thread-name cache entries and kept descriptors: bounded by the live QEMU threads (tests check)."""
        return max(len(self._thread), len(self._files))

    def _read_mounts(self) -> CgroupMounts:
        try:
            return CgroupMounts.from_mounts(read_small(f"{self._proc}/self/mounts"), "cpu")
        except OSError:
            return CgroupMounts(None, None)

    def _read_numa(self) -> dict[int, frozenset[int]]:
        base = f"{self._sys}/devices/system/node"
        try:
            names = [n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit()]
            nodes = {int(n[4:]): parse_cpu_list(read_small(f"{base}/{n}/cpulist")) for n in names}
        except OSError:
            return {}
        return nodes if len(nodes) > 1 else {}

    def pcpus(self) -> int:
        try:
            return len(parse_cpu_list(read_small(f"{self._sys}/devices/system/cpu/online")))
        except OSError:
            return os.cpu_count() or 1

    def _discover(self) -> tuple[list[int], dict[int, list[int]]]:
        """QEMU pids, and kernel vhost threads (pre-6.4 kernels) by the QEMU pid they serve."""
        if self._pids is not None:
            return sorted(self._pids), {}
        scan = self._names.scan()
        for pid in scan.gone:
            self._domain.pop(pid, None)
        vhost: dict[int, list[int]] = {}
        for pid, comm in scan.others.items():
            if (owner := vhost_owner(comm)) is not None:
                vhost.setdefault(owner, []).append(pid)
        return scan.qemu, vhost

    def _domain_of(self, pid: int) -> str:
        name = self._domain.get(pid)
        if name is None:
            try:
                argv = read_small(f"{self._proc}/{pid}/cmdline").split("\0")
            except OSError:
                argv = []
            name = domain_from_cmdline(argv) or f"pid-{pid}"
            self._domain[pid] = name
        return name

    def _threads(self, pid: int, extra: list[int], skipped: list[Skip]) -> tuple[ThreadReading, ...] | None:
        base = f"{self._proc}/{pid}/task"
        try:
            state = read_small(f"{self._proc}/{pid}/stat").rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "?"  # gone or unreadable: the task listing below decides and says why
        if state in ("Z", "X"):  # exited, not yet reaped: its counters are frozen, not a running VM
            skipped.append(Skip(f"pid {pid}", "process exited (zombie)"))
            return None
        try:
            tids = [int(t) for t in os.listdir(base)]
        except _GONE:
            skipped.append(Skip(f"pid {pid}", "process exited during the reading"))
            return None
        except PermissionError:
            skipped.append(Skip(f"pid {pid}", f"cannot list {base}: permission denied"))
            return None
        paths = [(tid, f"{base}/{tid}") for tid in tids] + [(tid, f"{self._proc}/{tid}") for tid in extra]
        comm = self._names.comm(pid)
        process_name = comm if comm is not None else self._process_name(pid)
        out: list[ThreadReading] = []
        names, numa = self._thread, bool(self._nodes)  # locals: this loop runs for every thread every round
        for tid, path in paths:
            key = (pid, tid)
            try:
                cached = names.get(key)
                if cached is None:
                    name = read_small(f"{path}/comm").rstrip("\n")
                    cls = classify_thread(name)
                    schedstat = f"{path}/schedstat"
                    named = name != process_name  # a thread QEMU has not named yet: look again next round
                    if named:
                        names[key] = (name, cls, schedstat)
                else:
                    name, cls, schedstat = cached
                    named = True
                run, wait = _schedstat(self._files.read(schedstat, named))
                cpu = _last_cpu(read_small(f"{path}/stat")) if numa and cls.kind is ThreadKind.VCPU else None
                throttled = self._throttled(key, path) if cls.kind is ThreadKind.VCPU else None
            except _GONE:
                skipped.append(Skip(f"pid {pid} tid {tid}", "thread exited during the reading"))
                continue
            except (OSError, ValueError) as exc:
                skipped.append(Skip(f"pid {pid} tid {tid}", f"unreadable: {exc}"))
                continue
            out.append(ThreadReading(tid, name, cls, run, wait, cpu, throttled))
        return tuple(out)

    def _throttled(self, key: tuple[int, int], task_dir: str) -> int | None:
        """Throttled ns of the cgroup holding this vCPU thread (libvirt gives each vCPU its own: <vm>/vcpuN).

        The thread's cgroup is looked up once; the cpu.stat with throttling counters is cgroup v2's when the cpu
        controller is there (throttled_usec), else cgroup v1's cpu controller (throttled_time, ns) — hybrid hosts.
        """
        if key not in self._vcpu_cgroup:
            self._vcpu_cgroup[key] = self._vcpu_stat_file(task_dir)
        where = self._vcpu_cgroup[key]
        if where is None:
            return None
        path, counter, unit = where
        if not path:
            return 0  # the root cgroup is never throttled
        try:
            stat = dict(line.split() for line in read_small(path).splitlines())
            return int(stat[counter]) * unit
        except (OSError, KeyError, ValueError):
            return None

    def _vcpu_stat_file(self, task_dir: str) -> tuple[str, str, int] | None:
        try:
            v2, v1 = parse_proc_cgroup(read_small(f"{task_dir}/cgroup"))
        except OSError:
            return None
        if v2 is not None and self._mounts.v2 is not None:
            if v2 == "/" and (v1 is None or v1 == "/"):
                return ("", "", 0)
            path = f"{self._mounts.v2}{v2.rstrip('/')}/cpu.stat"
            try:
                if "throttled_usec" in read_small(path):
                    return (path, "throttled_usec", 1000)
            except OSError:
                pass
        if v1 is not None and self._mounts.v1 is not None:
            if v1 == "/":
                return ("", "", 0)
            return (f"{self._mounts.v1}{v1.rstrip('/')}/cpu.stat", "throttled_time", 1)
        return ("", "", 0) if v2 == "/" else None

    def _process_name(self, pid: int) -> str | None:
        """comm of a process given by --pid (discovery caches it for the others)."""
        try:
            return read_small(f"{self._proc}/{pid}/comm").rstrip("\n")
        except OSError:
            return None

    def close(self) -> None:
        """Close the kept schedstat descriptors (a long-lived exporter keeps them; tests and CLI close).

        A schedstat descriptor is kept per named thread: one pread instead of open+read+close. procfs regenerates
        the file on every read at offset 0; once the thread is gone the read fails with ESRCH, even if its tid
        was reused, so a kept descriptor never reads someone else's counters.
        """
        if hasattr(self, "_files"):
            self._files.close()

    def __del__(self) -> None:  # a reader dropped without close() must not leak descriptors
        self.close()

    def __enter__(self) -> ProcReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cgroup(self, pid: int, domain: str, skipped: list[Skip]) -> CgroupReading | None:
        try:
            v2, v1 = parse_proc_cgroup(read_small(f"{self._proc}/{pid}/cgroup"))
        except OSError as exc:
            skipped.append(Skip(f"{domain} cgroup", f"cannot read /proc/{pid}/cgroup: {exc.strerror}"))
            return None
        if v2 is None or self._mounts.v2 is None:
            skipped.append(Skip(f"{domain} cgroup", "no cgroup v2 membership: no per-VM PSI"))
            return None
        path = vm_cgroup(v2)
        if path == "/":
            reason = "VM runs in the root cgroup: no per-VM PSI or throttling"
            skipped.append(Skip(f"{domain} cgroup", reason))
            return None
        directory = self._mounts.v2 + path
        psi = None
        try:
            psi = parse_psi(read_small(f"{directory}/cpu.pressure"))
        except (OSError, KeyError, ValueError) as exc:
            skipped.append(Skip(f"{domain} cpu.pressure", f"unreadable in {directory}: {exc}"))
        counters = throttling(directory, "throttled_usec", 1000)  # v2 with the cpu controller
        if counters is None and v1 is not None and self._mounts.v1 is not None:
            counters = throttling(f"{self._mounts.v1}{vm_cgroup(v1)}", "throttled_time", 1)
            if counters is None:
                skipped.append(Skip(f"{domain} cpu.stat", "no throttling counters in cgroup v2 or v1"))
        periods, throttled, throttled_ns = counters or (None, None, None)
        return CgroupReading(path, psi, periods, throttled, throttled_ns)

    def _cpu_times(self, skipped: list[Skip]) -> CpuTimes | None:
        try:
            first = read_small(f"{self._proc}/stat").split("\n", 1)[0].split()
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
        except (OSError, ValueError, IndexError) as exc:
            skipped.append(Skip("host CPU times", f"/proc/stat unreadable: {exc}"))
            return None
        busy = user + nice + system + irq + softirq
        return CpuTimes(busy, steal, busy + idle + iowait + steal)

    def read(self) -> Reading:
        mono, wall = time.monotonic_ns(), time.time()
        skipped: list[Skip] = []
        try:
            host_psi = parse_psi(read_small(f"{self._proc}/pressure/cpu"))
        except (OSError, KeyError, ValueError) as exc:
            host_psi = None
            skipped.append(Skip("host PSI", f"/proc/pressure/cpu unreadable ({exc}); kernel without PSI?"))
        vms: list[VmReading] = []
        cpu = self._cpu_times(skipped)
        if not self._has_schedstat:
            skipped.append(Skip("all VMs", "no /proc/*/schedstat: kernel built without CONFIG_SCHED_INFO"))
            return Reading(mono, wall, self.pcpus(), self._nodes, host_psi, (), tuple(skipped), cpu)
        qemu, vhost = self._discover()
        live_keys: set[tuple[int, int]] = set()
        for pid in qemu:
            threads = self._threads(pid, vhost.get(pid, []), skipped)
            if threads is None:
                continue
            live_keys.update((pid, t.tid) for t in threads)
            domain = self._domain_of(pid)
            if self._pids is None and not any(t.cls.kind is ThreadKind.VCPU for t in threads):
                skipped.append(Skip(domain, "no named vCPU threads (QEMU without -name debug-threads=on)"))
            vms.append(VmReading(pid, domain, threads, self._cgroup(pid, domain, skipped)))
        for key in self._thread.keys() - live_keys:
            del self._thread[key]
        for key in self._vcpu_cgroup.keys() - live_keys:
            del self._vcpu_cgroup[key]
        self._files.prune()
        return Reading(mono, wall, self.pcpus(), self._nodes, host_psi, tuple(vms), tuple(skipped), cpu)
