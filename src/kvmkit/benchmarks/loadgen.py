"""A process that the collector takes for a QEMU guest: real threads, real CPU load, known ground truth.

    python -m kvmkit.benchmarks.loadgen -name guest=NAME,debug-threads=on --vcpus 2 --busy 1 --cpu 1

The main thread renames itself `qemu-system-x86` (as /proc/PID/comm shows QEMU), the cmdline carries
QEMU's `-name guest=…`, and each vCPU thread names itself `CPU n/TCG`. Busy vCPUs spin (always runnable,
so their wait is exactly the time the scheduler gave to someone else); idle ones block. It prints `ready`
once every thread is named and pinned, so a parent waits for that line instead of sleeping. With `--truth
FILE` (8 bytes per vCPU) each busy vCPU publishes the time it saw itself not running, measured from clock
gaps. Used by the tests and by `bench`, so that neither needs a real QEMU to check the arithmetic against
the kernel.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
import threading
import time

PR_SET_NAME = 15
GAP_NS = 20_000  # a pause longer than this in a spinning loop means the thread was not running
_libc = ctypes.CDLL(None, use_errno=True)


def set_thread_name(name: str) -> None:
    """prctl(PR_SET_NAME) names the calling thread (its /proc/…/comm); the kernel keeps 15 bytes."""
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def spin(deadline: float, truth: mmap.mmap | None, offset: int) -> None:
    """Stay runnable until the deadline, adding up the wall-clock gaps (time not running) in `truth`.

    This is the ground truth that does not come from the kernel's scheduler statistics: a spinning thread
    sees every moment it was off the CPU as a jump of the clock, as a guest sees steal.
    """
    clock = time.monotonic_ns
    end = int(deadline * 1e9)
    stolen = 0
    last = clock()
    while last < end:
        now = clock()
        if now - last > GAP_NS:
            stolen += now - last
            if truth is not None:
                struct.pack_into("q", truth, offset, stolen)
        last = now


def _vcpu(
    index: int,
    busy: bool,
    cpus: set[int] | None,
    deadline: float,
    ready: threading.Barrier,
    truth: mmap.mmap | None,
) -> None:
    set_thread_name(f"CPU {index}/TCG")
    if cpus:
        os.sched_setaffinity(0, cpus)  # pid 0 = the calling thread
    ready.wait()
    if busy:
        spin(deadline, truth, 8 * index)
    else:
        threading.Event().wait(max(0.0, deadline - time.monotonic()))


def _iothread(deadline: float, ready: threading.Barrier) -> None:
    set_thread_name("IO iothread1")
    ready.wait()
    threading.Event().wait(max(0.0, deadline - time.monotonic()))


def _option(argv: list[str], flag: str, default: str | None) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else default


def main(argv: list[str]) -> int:
    vcpus = int(_option(argv, "--vcpus", "1") or 1)
    busy = int(_option(argv, "--busy", "0") or 0)
    seconds = float(_option(argv, "--seconds", "3") or 3)
    cpu_arg = _option(argv, "--cpu", None)
    cpus = {int(c) for c in cpu_arg.split(",")} if cpu_arg else None
    truth_path = _option(argv, "--truth", None)
    truth = None
    if truth_path:  # 8 bytes per vCPU: stolen ns as the spinning thread saw it
        with open(truth_path, "r+b") as shared:
            truth = mmap.mmap(shared.fileno(), 8 * vcpus)
    if busy > 1:
        # Several busy threads in one interpreter would queue for the GIL (a sleep, not CPU congestion):
        # ground truth needs one busy thread per process.
        print("loadgen: at most one busy vCPU per process", file=sys.stderr)
        return 2
    threading.stack_size(256 * 1024)  # 500-thread cost runs: keep the footprint small
    set_thread_name("qemu-system-x86")
    deadline = time.monotonic() + seconds
    ready = threading.Barrier(vcpus + 2)
    workers = [threading.Thread(target=_vcpu, args=(i, i < busy, cpus, deadline, ready, truth)) for i in range(vcpus)]
    workers.append(threading.Thread(target=_iothread, args=(deadline, ready)))
    for worker in workers:
        worker.start()
    ready.wait()
    print("ready", flush=True)
    for worker in workers:
        worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
