"""`kvmkit congestion bench`: is the congestion figure right, and what does measuring it cost?

Accuracy: k single-threaded busy "VMs" (loadgen processes, one spinning vCPU each) pinned to c cores. Two
ground truths, neither taken from schedstat:
  * the clock-gap truth: each spinning thread adds up the jumps of its own clock (time it was not running,
    as a guest sees steal) into shared memory; valid whatever else runs on those cores. It also counts time
    the core itself lost to interrupts and to the hypervisor under this host (steal in /proc/stat), which no
    task is charged with and schedstat cannot show. /proc/stat gives that loss per core but not whom it hit,
    so the mean truth is a bracket: [mean gap − loss·c/k, mean gap]; the per-thread truth assumes an even
    split and is only meaningful when the loss is small (`core_lost_pct`; on a nested host it is not);
  * the fair-share truth max(0, 1 − c/k): valid only when nothing else runs on those cores, so the busy share
    of the cores not explained by our threads (/proc/stat) is reported next to it.
On one core every thread is compared; over several cores the balancer may favour threads for seconds, so the
fair share is compared with the mean only.

Cost: one loadgen with N idle named threads, sampled at 1 Hz with the normal discovery (all QEMU-like
processes of the host); the collector's CPU time per sample (thread CPU clock) over the interval is the share
of a core.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pydantic import BaseModel

from kvmkit.benchmarks import realqemu
from kvmkit.benchmarks.realqemu import QemuCase
from kvmkit.congestion.collector import Collector
from kvmkit.congestion.kernelfiles import core_ticks
from kvmkit.congestion.procfs import ProcReader
from kvmkit.errors import EnvironmentProblem, InvalidInput
from kvmkit.rss import peak_rss_mib


class ThreadAccuracy(BaseModel):
    measured_pct: float  # congestion % from schedstat, as `sample` reports it
    clock_gap_pct: float  # time the thread saw itself off the CPU
    truth_pct: float  # clock gap minus this thread's part of the core's irq/steal loss
    error_pp: float  # |measured - truth|


class AccuracyCase(BaseModel):
    busy_threads: int
    cores: list[int]
    threads: list[ThreadAccuracy]
    max_error_pp: float  # worst thread against its truth (loss split evenly: see core_lost_pct)
    mean_error_pp: float  # mean of threads against mean truth (loss split evenly)
    mean_truth_low_pct: float  # the mean truth lies in [low, high] however the core's loss was split
    mean_truth_high_pct: float
    outside_bracket_pp: float  # how far the measured mean lies outside that bracket (0: inside)
    fair_share_pct: float  # max(0, 1 - c/k): the truth when the cores hold nothing else
    measured_mean_pct: float
    fair_share_error_pp: float  # worst thread (one core) or the mean (several cores) against the fair share
    other_load_pct: float  # busy share of those cores not explained by our threads: fair share invalid if > 0
    core_lost_pct: float  # share of those cores' time lost to irq, softirq and hypervisor steal (/proc/stat)
    runnable_pct: float  # mean (run + wait)/Δt: ~100 shows the spinning threads never slept


class CostResult(BaseModel):
    threads: int
    samples: int
    interval_s: float
    cpu_ms_per_sample: float
    core_pct: float  # share of one core at this interval


class BenchResult(BaseModel):
    accuracy: list[AccuracyCase]
    max_error_pp: float  # worst thread of all cases against its truth
    max_mean_error_pp: float  # worst case mean against its mean truth (loss split evenly)
    max_outside_bracket_pp: float  # worst distance of a case mean outside its truth bracket
    qemu: list[QemuCase] = []  # real QEMU guests spinning on one core (when qemu-system-x86_64 is installed)
    cost: CostResult | None
    seconds: float = 0.0  # the whole bench
    peak_rss_mib: float = 0.0  # this process, sampling 500 threads included: must not grow with their number


@contextmanager
def loadgen(
    name: str, vcpus: int, busy: int, cpus: Sequence[int] | None, seconds: float, truth: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A running loadgen process, ready (all threads named and pinned) when the block starts; killed after."""
    argv = [sys.executable, "-I", "-m", "kvmkit.benchmarks.loadgen", "-name", f"guest={name},debug-threads=on"]
    argv += ["--vcpus", str(vcpus), "--busy", str(busy), "--seconds", str(seconds)]
    if cpus:
        argv += ["--cpu", ",".join(map(str, cpus))]
    if truth:
        argv += ["--truth", str(truth)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise EnvironmentProblem(f"loadgen {name} did not start (exit code {proc.wait()})")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def quietest_core(window_s: float = 0.3) -> int:
    """The available core with the least busy time over a short window: where ground truth is cleanest."""
    cores = sorted(os.sched_getaffinity(0))
    before = {c: core_ticks([c]) for c in cores}
    time.sleep(window_s)
    busy = {c: core_ticks([c])[0] - before[c][0] for c in cores}
    return min(cores, key=lambda c: (busy[c], -c))


@contextmanager
def spinners(count: int, cores: Sequence[int], seconds: float) -> Iterator[dict[int, mmap.mmap]]:
    """`count` one-spinning-vCPU loadgens, all ready when the block starts: pid → its clock-gap counter."""
    with ExitStack() as stack:
        # tmpfs: a page-cache file would let dirty-page throttling (other tenants' I/O) put the spinning
        # writer to sleep, which its clock would count as waiting for a CPU
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kvmkit-bench-", dir=shm)))
        counters: dict[int, mmap.mmap] = {}
        for i in range(count):
            path = folder / f"truth-{i}"
            path.write_bytes(bytes(8))
            proc = stack.enter_context(loadgen(f"bench-{i}", 1, 1, cores, seconds, path))
            with path.open("r+b") as shared:
                counters[proc.pid] = mmap.mmap(shared.fileno(), 8)
            stack.callback(counters[proc.pid].close)
        yield counters


def _stolen_ns(counter: mmap.mmap) -> int:
    return struct.unpack_from("q", counter, 0)[0]


def accuracy_case(busy_threads: int, cores: Sequence[int], seconds: float = 2.0) -> AccuracyCase:
    if busy_threads < 1 or not cores:
        raise InvalidInput("an accuracy case needs at least one busy thread and one core")
    available = os.sched_getaffinity(0)
    if not set(cores) <= available:
        raise InvalidInput(f"cores {sorted(cores)} not all available (have {sorted(available)})")
    warmup = 0.3
    with spinners(busy_threads, cores, warmup + seconds + 2.0) as counters:
        time.sleep(warmup)  # let the balancer settle the pinned threads
        collector = Collector(ProcReader(pids=counters))  # closed with the reader's __del__ at return
        collector.sample()
        gaps0 = {pid: _stolen_ns(c) for pid, c in counters.items()}
        ticks0 = core_ticks(cores)
        time.sleep(seconds)
        report = collector.sample()
        gaps1 = {pid: _stolen_ns(c) for pid, c in counters.items()}
        ticks1 = core_ticks(cores)
    assert report is not None
    vcpus = [(vm.pid, v) for vm in report.vms for v in vm.vcpus]
    if len(vcpus) != busy_threads:
        raise EnvironmentProblem(f"measured {len(vcpus)} of {busy_threads} busy threads: {report.skipped}")
    busy, total, lost = (after - before for after, before in zip(ticks1, ticks0, strict=True))
    ours = sum(v.utilisation_pct for _, v in vcpus) / len(cores)  # percent of those cores
    lost_pct = 100.0 * lost / total if total else 0.0
    other = max(0.0, 100.0 * busy / total - lost_pct - ours) if total else 0.0
    # The core's loss falls on whoever was current: our threads' part, shared evenly between them.
    ours_part = ours / (ours + other) if ours + other else 0.0
    lost_per_thread = lost_pct * len(cores) * ours_part / busy_threads
    threads: list[ThreadAccuracy] = []
    for pid, vcpu in vcpus:
        gap = 100 * (gaps1[pid] - gaps0[pid]) / (report.interval_s * 1e9)
        truth = gap - lost_per_thread
        error = abs(vcpu.congestion_pct - truth)
        row = ThreadAccuracy(measured_pct=vcpu.congestion_pct, clock_gap_pct=round(gap, 3),
                             truth_pct=round(truth, 3), error_pp=round(error, 3))  # fmt: skip
        threads.append(row)
    fair = 100.0 * max(0.0, 1 - len(cores) / busy_threads)
    mean = sum(t.measured_pct for t in threads) / len(threads)
    worst = max(abs(t.measured_pct - fair) for t in threads)
    high = sum(t.clock_gap_pct for t in threads) / len(threads)
    low = max(0.0, high - lost_pct * len(cores) / busy_threads)
    return AccuracyCase(
        busy_threads=busy_threads,
        cores=list(cores),
        threads=threads,
        max_error_pp=max(t.error_pp for t in threads),
        mean_error_pp=round(abs(mean - sum(t.truth_pct for t in threads) / len(threads)), 3),
        mean_truth_low_pct=round(low, 3),
        mean_truth_high_pct=round(high, 3),
        outside_bracket_pp=round(max(0.0, low - mean, mean - high), 3),
        fair_share_pct=round(fair, 3),
        measured_mean_pct=round(mean, 3),
        fair_share_error_pp=round(worst if len(cores) == 1 else abs(mean - fair), 3),
        other_load_pct=round(other, 2),
        core_lost_pct=round(lost_pct, 2),
        runnable_pct=round(sum(v.utilisation_pct + v.congestion_pct for _, v in vcpus) / len(vcpus), 3),
    )


def sampling_cost(threads: int = 500, samples: int = 5, interval_s: float = 1.0) -> CostResult:
    """CPU time the collector spends per sample with `threads` QEMU-like threads on the host."""
    if threads < 3 or samples < 1:
        raise InvalidInput("cost needs at least 3 threads and 1 sample")
    with ExitStack() as stack:
        stack.enter_context(loadgen("bench-cost", threads - 2, 0, None, samples * interval_s + 5))
        collector = stack.enter_context(Collector())
        collector.sample()
        spent: list[float] = []
        seen = 0
        deadline = time.monotonic()
        for _ in range(samples):
            deadline += interval_s
            time.sleep(max(0.0, deadline - time.monotonic()))
            before = time.thread_time()
            report = collector.sample()
            spent.append(time.thread_time() - before)
            assert report is not None
            seen = sum(vm.vcpus_allocated + vm.emulator.threads + vm.iothreads.threads for vm in report.vms)
    per_sample = sum(spent) / len(spent)
    return CostResult(
        threads=seen,
        samples=samples,
        interval_s=interval_s,
        cpu_ms_per_sample=round(per_sample * 1000, 3),
        core_pct=round(100 * per_sample / interval_s, 3),
    )


def run(seconds: float = 2.0, core: int | None = None, cost_threads: int = 500, cost_samples: int = 5) -> BenchResult:
    """The default bench: 1–4 busy threads on one core, 4 on all cores (mean), then the sampling cost."""
    started = time.perf_counter()
    available = sorted(os.sched_getaffinity(0))
    core = quietest_core() if core is None else core
    cases = [accuracy_case(k, [core], seconds) for k in (1, 2, 3, 4)]
    if len(available) > 1:
        cases.append(accuracy_case(2 * len(available), available, seconds))
    qemu = [realqemu.fair_share_case(k, core, seconds) for k in (2, 3)] if realqemu.available() else []
    cost = sampling_cost(cost_threads, cost_samples) if cost_samples > 0 else None
    return BenchResult(
        qemu=qemu,
        accuracy=cases,
        max_error_pp=max(c.max_error_pp for c in cases),
        max_mean_error_pp=max(c.mean_error_pp for c in cases),
        max_outside_bracket_pp=max(c.outside_bracket_pp for c in cases),
        cost=cost,
        seconds=round(time.perf_counter() - started, 1),
        peak_rss_mib=peak_rss_mib(),
    )
