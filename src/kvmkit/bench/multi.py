"""The same suite in several lab VMs at once: the aggregate a host delivers to many guests.

fio's own `--client` mode needs a network path to `fio --server` in each guest; the lab guests have no NIC, so
kvmkit runs fio in every guest at the same moment through the agent (one thread per VM, each job starting
together because every run follows the same job list) and adds the results up per job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from kvmkit.bench.command_runner import CommandRunner
from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.schema import BenchRun
from kvmkit.virt import agent
from kvmkit.virt.connection import connection, lookup


class AggregateJob(BaseModel):
    name: str
    vms: int
    total_iops: float
    total_mib_s: float
    worst_p99_us: float | None  # the slowest guest's p99: the tail a tenant feels


class MultiResult(BaseModel):
    vms: list[str]
    jobs: list[AggregateJob]
    runs: list[BenchRun]


def run(uri: str, vms: list[str], suite: str, target: str, options: BenchOptions,
        progress: Callable[[str], None] = lambda _m: None) -> MultiResult:
    barrier = threading.Barrier(len(vms))

    def one(vm: str) -> BenchRun:
        try:
            return _one(vm)
        except BaseException:
            barrier.abort()  # the others must not wait for a VM that will never start its next job
            raise

    def _one(vm: str) -> BenchRun:
        with connection(uri) as conn:
            dom = lookup(conn, vm)

            def exec_fn(argv: list[str], timeout_s: float) -> agent.ExecResult:
                if argv and argv[0] == options.fio and "--output-format=json" in argv:
                    barrier.wait(timeout=600)  # every guest starts each fio job together
                return agent.guest_exec(dom, argv, timeout_s=timeout_s)

            result = run_suite(suite, target, CommandRunner(f"vm:{vm}", exec_fn), options)
            progress(f"{vm}: {result.status}")
            return result

    with ThreadPoolExecutor(max_workers=len(vms)) as pool:
        runs = list(pool.map(one, vms))
    return MultiResult(vms=vms, jobs=aggregate(runs), runs=runs)


def aggregate(runs: list[BenchRun]) -> list[AggregateJob]:
    """Sum throughput per job across runs; keep the worst p99 (pure: unit-tested on recorded results)."""
    names = [j.name for j in runs[0].jobs if j.phase == "measure"] if runs else []
    out = []
    for name in names:
        jobs = [j for r in runs for j in r.jobs if j.name == name and j.phase == "measure"]
        p99s = [d.latency.p99 for j in jobs for d in (j.read, j.write) if d is not None and d.latency.p99]
        out.append(AggregateJob(name=name, vms=len(jobs), total_iops=round(sum(j.iops for j in jobs), 1),
                                total_mib_s=round(sum(j.bw_bytes for j in jobs) / 2**20, 1),
                                worst_p99_us=round(max(p99s) / 1000, 1) if p99s else None))
    return out
