"""Measured, not asserted: a storage fix judged by `kvmkit bench` in the guest before and after it.

before: the bench suite in the running guest (fio through the guest agent) → apply the fixes (journaled, as
`tune vm apply`) → restart the VM so QEMU runs the new definition → after: the same suite → per-job ratios
after/before (IOPS, p99) and their geometric mean. A fix that measures worse is reported as worse; `undo` puts the
old definition back (and restarts again) once measured."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.bench import compare
from kvmkit.bench.command_runner import CommandRunner
from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.schema import BenchRun
from kvmkit.errors import Conflict, OperationFailed
from kvmkit.rss import peak_rss_mib
from kvmkit.tune.vm import edge
from kvmkit.virt import agent
from kvmkit.virt.connection import Connection, Domain, is_running, power_off, start

BOOT_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class JobRatio:
    job: str
    iops_before: float
    iops_after: float
    iops_ratio: float  # after / before: > 1 is better
    p99_us_before: float | None
    p99_us_after: float | None
    p99_ratio: float | None  # after / before: < 1 is better


@dataclass(frozen=True)
class Measured:
    vm: str
    goal: str
    fixed: list[str]
    suite: str
    jobs: list[JobRatio]
    iops_geomean_ratio: float
    verdict: str  # better | worse | no change
    undone: bool
    journal: str | None
    peak_rss_mib: float


def ratios(before: BenchRun, after: BenchRun) -> list[JobRatio]:
    """Per measured job present in both runs: after/before (pure)."""
    rows = []
    after_jobs = {j.name: j for j in after.measured()}
    for job in before.measured():
        other = after_jobs.get(job.name)
        if other is None:
            continue
        b, a = compare.cell(job), compare.cell(other)
        p99 = a.p99_us / b.p99_us if a.p99_us and b.p99_us else None
        rows.append(JobRatio(job.name, b.iops, a.iops, a.iops / b.iops if b.iops else 0.0, b.p99_us, a.p99_us,
                             p99))
    return rows


def geomean(values: list[float]) -> float:
    positive = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else 0.0


def verdict(ratio: float, noise: float = 0.03) -> str:
    """'better' / 'worse' beyond ±noise (3 %: what two identical quick runs differ by here), else 'no change'."""
    if ratio > 1 + noise:
        return "better"
    if ratio < 1 - noise:
        return "worse"
    return "no change"


def _bench(dom: Domain, suite: str, target: str, options: BenchOptions) -> BenchRun:
    def exec_fn(argv: list[str], timeout_s: float) -> agent.ExecResult:
        return agent.guest_exec(dom, argv, timeout_s=timeout_s)

    run = run_suite(suite, target, CommandRunner(f"vm:{dom.name()}", exec_fn), options)
    if run.status != "ok":
        raise OperationFailed(f"VM {dom.name()}: bench {suite} failed: {run.error}")
    return run


def restart(dom: Domain, shutdown_timeout_s: float, timeout_s: float = BOOT_TIMEOUT_S) -> None:
    """Shut the VM down (agent or ACPI; hard power-off after shutdown_timeout_s) and start it (QEMU only picks up
    a new definition at start), then wait for its agent."""
    power_off(dom, timeout_s=shutdown_timeout_s)
    start(dom)
    wait_agent(dom, timeout_s)


def wait_agent(dom: Domain, timeout_s: float = BOOT_TIMEOUT_S) -> None:
    """Return once the guest agent answers: after a start, or while a loaded host keeps it busy."""
    deadline = time.monotonic() + timeout_s
    while not agent.ping(dom):
        if time.monotonic() > deadline or not dom.isActive():
            raise OperationFailed(f"VM {dom.name()}: its agent did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)  # the agent channel gives no "ready" event


def measure(conn: Connection, dom: Domain, goal: str, journal_dir: Path, *, only: set[str] | None, target: str,
            options: BenchOptions, suite: str = "quick", undo: bool = False,
            shutdown_timeout_s: float = 120.0) -> Measured:
    if not is_running(dom):
        raise Conflict(f"VM {dom.name()}: measuring needs it running, with its guest agent")
    wait_agent(dom, 60)
    _report, _xml, _new, chosen = edge.plan(conn, dom, goal, only)
    if not chosen:
        raise Conflict(f"VM {dom.name()}: nothing to fix for {goal}" + (f" among {sorted(only)}" if only else ""))
    before = _bench(dom, suite, target, options)
    outcome = edge.apply(conn, dom, goal, journal_dir, only=only)
    restart(dom, shutdown_timeout_s)
    try:
        after = _bench(dom, suite, target, options)
    finally:
        if undo:
            edge.rollback(conn, dom.name(), journal_dir)
            restart(dom, shutdown_timeout_s)
    rows = ratios(before, after)
    mean = geomean([r.iops_ratio for r in rows])
    return Measured(vm=dom.name(), goal=goal, fixed=outcome.fixed, suite=suite, jobs=rows,
                    iops_geomean_ratio=mean, verdict=verdict(mean), undone=undo,
                    journal=None if undo else outcome.journal, peak_rss_mib=peak_rss_mib())
