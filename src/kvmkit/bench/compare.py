"""Side-by-side comparison of BenchRuns: pure data for the CLI table and the HTML report.

Jobs are matched by name (the suites name them by rw, block size and queue depth), so two runs of the same
suite on different targets, runners or storage paths line up row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvmkit.bench.schema import BenchRun, JobResult


@dataclass(frozen=True)
class Cell:
    iops: float
    mib_s: float
    p50_us: float | None
    p99_us: float | None
    p99_9_us: float | None
    max_us: float | None
    cpu_us_per_io: float | None


@dataclass(frozen=True)
class Row:
    job: str
    cells: list[Cell | None]  # one per run, None where that run has no such job

    def iops_change_pct(self, index: int) -> float | None:
        """Change of IOPS of run `index` against the first run, in percent."""
        base, other = self.cells[0], self.cells[index]
        if base is None or other is None or base.iops == 0:
            return None
        return (other.iops / base.iops - 1) * 100


def _us(ns: float | None) -> float | None:
    return None if ns is None else ns / 1000


def cell(job: JobResult) -> Cell:
    main = job.main_direction()
    lat = main.latency if main else None
    return Cell(
        iops=job.iops,
        mib_s=job.bw_bytes / 1024 / 1024,
        p50_us=_us(lat.p50) if lat else None,
        p99_us=_us(lat.p99) if lat else None,
        p99_9_us=_us(lat.p99_9) if lat else None,
        max_us=_us(lat.max) if lat else None,
        cpu_us_per_io=job.cpu_us_per_io,
    )


def rows(runs: Sequence[BenchRun]) -> list[Row]:
    order: list[str] = []
    by_run: list[dict[str, JobResult]] = []
    for run in runs:
        jobs = {j.name: j for j in run.measured()}
        by_run.append(jobs)
        order += [name for name in jobs if name not in order]
    return [Row(name, [cell(jobs[name]) if name in jobs else None for jobs in by_run]) for name in order]


@dataclass(frozen=True)
class Curve:
    """IOPS and p99 against queue depth for one run and one (rw, bs): the sweep's shape."""

    run: str
    rw: str
    bs: int
    qds: list[int]
    iops: list[float]
    p99_us: list[float | None]


def curves(run: BenchRun) -> list[Curve]:
    groups: dict[tuple[str, int], list[JobResult]] = {}
    for job in run.measured():
        if job.rate_iops is None:
            groups.setdefault((job.rw, job.bs), []).append(job)
    out = []
    for (rw, bs), jobs in groups.items():
        jobs = sorted(jobs, key=lambda j: j.iodepth)
        if len({j.iodepth for j in jobs}) < 2:
            continue
        out.append(
            Curve(
                run.label,
                rw,
                bs,
                [j.iodepth for j in jobs],
                [j.iops for j in jobs],
                [cell(j).p99_us for j in jobs],
            )
        )
    return out


def machine_notes(runs: Sequence[BenchRun]) -> list[str]:
    """What a reader must know before comparing numbers across these runs."""
    notes = []
    hosts = {r.machine.hostname for r in runs}
    if len(hosts) > 1:
        notes.append(
            f"runs come from {len(hosts)} machines ({', '.join(sorted(hosts))}): absolute numbers "
            "are not comparable, only each machine's own ratios"
        )
    if any(r.machine.runner != "host" for r in runs):
        notes.append(
            "in-guest runs on a TCG (emulated) lab distort absolute numbers: only the comparison of "
            "paths measured on one machine counts"
        )
    for run in runs:
        if run.status != "ok":
            notes.append(f"{run.label}: run {run.status} ({run.error}); its data is partial")
    return notes
