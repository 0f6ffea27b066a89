"""`kvmkit memory bench`: is each memory figure right, and what does measuring it cost?

Accuracy (`--lab`): the checks of `memory_lab` on the lab's libvirtd — each causes what it measures and compares
the collector with a truth that is not the collector (VmRSS, libvirt, the guest's own /proc/meminfo via the agent,
the kernel's per-process KSM counts and ksmd's ticks, a quiet anchor and a flat neighbour).

Cost, two ways, both printed:
  * SYNTHETIC: a /proc + /sys + cgroup tree of N QEMU-looking processes as plain files (memory_synth), read at
    1 Hz; regular files are cheaper than the procfs files the kernel generates, so this gives the collector's own
    Python cost at fleet scale, not the kernel's;
  * REAL: the same reader on the QEMU processes running on this host, each read N/k times per round, so every
    round does N VM reads of real, kernel-generated procfs and cgroup files (smaps timed on each VM once).
The smaps split is refreshed every `split_max_age_s` per VM, so its cost is amortised over that period.

Exporter RSS: a child process serving both families (congestion of this host, memory of the N-VM synthetic tree)
is scraped repeatedly; its peak RSS (VmHWM) is read from /proc.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from kvmkit.benchmarks import memory_synth
from kvmkit.benchmarks.memory_lab import Check
from kvmkit.errors import EnvironmentProblem, InvalidInput
from kvmkit.memory.collector import MemCollector
from kvmkit.memory.parse import ram_split
from kvmkit.memory.procfs import MemReader, read_small_large
from kvmkit.rss import peak_rss_mib


class CostResult(BaseModel):
    kind: str  # "synthetic" (N VMs as plain files) or "real" (this host's QEMU processes, extrapolated to N)
    vms: int  # VMs measured
    extrapolated_to: int
    rounds: int
    host_ms_per_round: float  # the host's files and the /proc scan, whatever the number of VMs
    read_us_per_vm: float  # one VM's reading (stat, PSI, OOM counters), smaps cached: the exporter's path
    report_us_per_vm: float  # one VM's interval report (rates, nulls with reasons): what `sample` adds
    smaps_ms_per_vm: float  # one smaps read + split
    split_max_age_s: float
    read_core_pct: float  # at 1 Hz for `extrapolated_to` VMs: host + reading + smaps amortised (the exporter)
    sample_core_pct: float  # the same plus the reports (`sample`/`top` at 1 Hz)


class ExporterResult(BaseModel):
    vms: int
    scrapes: int
    scrape_ms_median: float
    peak_rss_mib: float  # VmHWM of the exporter process
    body_kib: float


class MemoryBench(BaseModel):
    checks: list[Check]
    checks_ok: bool
    cost: list[CostResult]
    exporter: ExporterResult | None
    seconds: float
    peak_rss_mib: float


def _median_ms(calls: list[float]) -> float:
    return 1000 * sorted(calls)[len(calls) // 2]


def _measure(reader: MemReader, rounds: int, tick: Callable[[], None]) -> tuple[float, float]:
    """Median thread-CPU ms of one reading, and of one reading + report, over `rounds` rounds."""
    from kvmkit.memory.calc import memory_report

    previous = reader.read()
    reads, samples = [], []
    for _ in range(rounds):
        tick()
        before = time.thread_time()
        current = reader.read()
        middle = time.thread_time()
        memory_report(previous, current)
        samples.append(time.thread_time() - before)
        reads.append(middle - before)
        previous = current
    return _median_ms(reads), _median_ms(samples)


def _cost(kind: str, vms: int, target: int, rounds: int, host_ms: float, read_ms: float, sample_ms: float,
          smaps_ms: float, age_s: float) -> CostResult:  # fmt: skip
    per_vm_read = max(0.0, read_ms - host_ms) / vms
    per_vm_report = max(0.0, sample_ms - read_ms) / vms
    read_ms_per_s = host_ms + per_vm_read * target + smaps_ms * target / age_s
    return CostResult(kind=kind, vms=vms, extrapolated_to=target, rounds=rounds, host_ms_per_round=round(host_ms, 3),
                      read_us_per_vm=round(1000 * per_vm_read, 2), report_us_per_vm=round(1000 * per_vm_report, 2),
                      smaps_ms_per_vm=round(smaps_ms, 3), split_max_age_s=age_s,
                      read_core_pct=round(read_ms_per_s / 10, 3),
                      sample_core_pct=round((read_ms_per_s + per_vm_report * target) / 10, 3))  # fmt: skip


def synthetic_cost(vms: int = 500, rounds: int = 10, split_max_age_s: float = 600.0) -> CostResult:
    """The collector at 1 Hz over a SYNTHETIC tree of `vms` QEMU processes (plain files: Python's cost)."""
    if vms < 1 or rounds < 1:
        raise InvalidInput("cost needs at least 1 VM and 1 round")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="kvmkit-memsynth-", dir=shm) as folder:
        host = memory_synth.build(Path(folder), vms)
        with MemReader(proc=host.proc, sys=host.sys, pids=[]) as bare:
            host_ms, _ = _measure(bare, rounds, lambda: None)
        reader = MemReader(proc=host.proc, sys=host.sys, split_max_age_s=split_max_age_s, split_budget=None)
        with reader:
            before = time.thread_time()
            reader.read()  # cold: every smaps once
            cold_ms = 1000 * (time.thread_time() - before)
            read_ms, sample_ms = _measure(reader, rounds, lambda: memory_synth.advance(host, 1.0))
    smaps_ms = max(0.0, cold_ms - read_ms) / vms
    return _cost("synthetic", vms, vms, rounds, host_ms, read_ms, sample_ms, smaps_ms, split_max_age_s)


def real_cost(target: int = 500, rounds: int = 5, split_max_age_s: float = 600.0) -> CostResult | None:
    """The reader on this host's real QEMU processes: each read `target`/N times per round, so a round does
    `target` VM reads of real procfs and cgroup files (kernel-generated, cold after each 1 s pause)."""
    with MemReader(split_max_age_s=3600, split_budget=None) as probe:
        pids = [(vm.pid, vm.configured_bytes) for vm in probe.read().vms]
    if not pids:
        return None
    fleet = [pid for pid, _ in pids] * max(1, round(target / len(pids)))
    with MemReader(pids=fleet, split_max_age_s=3600, split_budget=None) as reader:
        read_ms, sample_ms = _measure(reader, rounds, lambda: time.sleep(1.0))
    with MemReader(pids=[]) as bare:  # the host's files alone, plus the /proc scan discovery does
        host_ms, _ = _measure(bare, rounds, lambda: time.sleep(0.2))
    scan = time.thread_time()
    for _ in range(rounds):
        with os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit():
                    entry.inode()
    host_ms += 1000 * (time.thread_time() - scan) / rounds
    before = time.thread_time()
    for pid, configured in pids:
        try:
            ram_split(read_small_large(f"/proc/{pid}/smaps"), configured, 0)
        except (OSError, ValueError):
            continue
    smaps_ms = 1000 * (time.thread_time() - before) / len(pids)
    return _cost("real", len(fleet), target, rounds, host_ms, read_ms, sample_ms, smaps_ms, split_max_age_s)


def exporter_rss(vms: int = 500, scrapes: int = 20) -> ExporterResult:
    """Peak RSS of an exporter process serving both families for a SYNTHETIC `vms`-VM tree."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="kvmkit-memsynth-", dir=shm) as folder:
        host = memory_synth.build(Path(folder), vms)
        argv = [sys.executable, "-I", "-m", "kvmkit.benchmarks.memory", "--child-exporter", host.proc, host.sys]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            if not line.isdigit():
                raise EnvironmentProblem(f"the exporter child did not start (exit {child.poll()})")
            port = int(line)
            times, size = [], 0
            for _ in range(scrapes):
                memory_synth.advance(host, 1.0)
                started = time.perf_counter()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/metrics")
                body = conn.getresponse().read()
                conn.close()
                times.append(time.perf_counter() - started)
                size = len(body)
                time.sleep(1.05)  # past the shared-reading cache: every scrape reads afresh
            with open(f"/proc/{child.pid}/status") as status:
                hwm = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:"))
        finally:
            child.kill()
            child.wait()
    return ExporterResult(vms=vms, scrapes=scrapes, scrape_ms_median=round(1000 * sorted(times)[len(times) // 2], 1),
                          peak_rss_mib=round(hwm / 1024, 1), body_kib=round(size / 1024, 1))  # fmt: skip


def lab_checks(lab_dir: Path, ksm: bool = True, pressure: bool = True) -> list[Check]:
    """The lab ground-truth checks, on a transient balloon guest next to the lab's first VM."""
    from kvmkit.benchmarks import memory_lab
    from kvmkit.lab.state import load
    from kvmkit.memory.balloon import LibvirtBalloons
    from kvmkit.virt import connection  # noqa: F401  (keeps libvirt from printing agent pings to stderr)

    state = load(lab_dir)
    if state is None or not state.vms:
        raise EnvironmentProblem(f"no lab with a VM at {lab_dir}: run `kvmkit lab up` first (or --no-lab)")
    neighbour = state.vms[0].name
    rows: list[Check] = []
    with memory_lab.balloon_guest(state.uri, lab_dir, f"{lab_dir.name}-membench") as dom:
        balloons = LibvirtBalloons(state.uri)
        try:
            fresh = MemReader(balloons=balloons.read, split_max_age_s=0.0, split_budget=None, events_every=1)
            with MemCollector(fresh) as collector:
                rows += memory_lab.rss_check(collector, [dom.name(), neighbour])
                rows += memory_lab.balloon_check(dom, collector)
                if ksm and memory_lab.KSM.exists():
                    rows += memory_lab.ksm_check([dom, dom.connect().lookupByName(neighbour)], collector)
                if pressure:
                    rows += memory_lab.pressure_check(dom, neighbour, collector)
        finally:
            balloons.close()
    return rows


def run(vms: int = 500, rounds: int = 10, lab_dir: Path | None = None, ksm: bool = True, pressure: bool = True,
        exporter: bool = True) -> MemoryBench:  # fmt: skip
    started = time.perf_counter()
    checks = lab_checks(lab_dir, ksm, pressure) if lab_dir is not None else []
    cost = [synthetic_cost(vms, rounds)]
    real = real_cost(vms)
    if real is not None:
        cost.append(real)
    return MemoryBench(
        checks=checks,
        checks_ok=all(c.ok for c in checks),
        cost=cost,
        exporter=exporter_rss(vms) if exporter else None,
        seconds=round(time.perf_counter() - started, 1),
        peak_rss_mib=peak_rss_mib(),
    )


def _child_exporter(proc: str, sys_dir: str) -> None:
    """`python -m kvmkit.benchmarks.memory --child-exporter PROC SYS`: both families, prints its port, serves."""
    import threading

    from kvmkit.congestion import exporter
    from kvmkit.congestion.procfs import ProcReader
    from kvmkit.memory.exporter import MemoryCollector

    collectors = [exporter.CongestionCollector(ProcReader()), MemoryCollector(MemReader(proc=proc, sys=sys_dir))]
    server, _ = exporter.start("127.0.0.1", 0, collectors=collectors)
    print(server.server_port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child-exporter":
        _child_exporter(sys.argv[2], sys.argv[3])
