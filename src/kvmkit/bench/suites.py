"""The four suites as pure programs: generators that yield fio invocations and receive parsed results.

Why generators: `latency-under-load` needs the measured maximum before it can set `rate_iops`, and `snia`
decides after every round whether steady state is reached. Written as `results = yield invocation`, each
suite stays free of I/O (the engine runs fio, on the host or in a guest) and is testable by feeding
it results.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from kvmkit.bench.jobs import FioInvocation, FioJob, global_options, job, timed
from kvmkit.bench.schema import JobResult, SteadyState, WindowCell
from kvmkit.bench.steady import WINDOW, first_steady_window, latest_window
from kvmkit.errors import InvalidInput

KIB, MIB = 1024, 1024 * 1024
SWEEP_QDS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Purge:
    """Ask the engine to discard the target (blkdiscard a device, truncate a file) before preconditioning."""

    path: str
    kind: str


@dataclass(frozen=True)
class SuiteContext:
    filename: str
    kind: str  # "file" or "block"
    size_bytes: int
    ioengine: str = "io_uring"
    runtime_s: float = 30.0
    ramp_s: float = 5.0
    needs_fill: bool = True  # a fresh target: reads of never-written blocks measure nothing
    log_dir: str | None = None
    qds: tuple[int, ...] = SWEEP_QDS
    load_fraction: float = 0.75
    max_rounds: int = 25
    precondition_bytes: int | None = None  # None: 2 × size (SNIA WIPC); smaller is a documented cap
    snia_matrix: str = "reduced"  # "reduced": 4k/64k × 0/65/100 % write; "tracking": 4k random write only


@dataclass
class SuiteOutcome:
    steady_state: SteadyState | None = None
    warnings: list[str] = field(default_factory=list)


Step = FioInvocation | Purge
Program = Generator[Step, list[JobResult], SuiteOutcome]


def _invocation(ctx: SuiteContext, jobs: list[FioJob]) -> FioInvocation:
    return FioInvocation(
        global_options=global_options(ctx.filename, ctx.size_bytes, ctx.ioengine),
        jobs=tuple(jobs),
        log_dir=ctx.log_dir,
    )


def _fill_job(ctx: SuiteContext) -> FioJob:
    """One sequential pass of random data over the working set, so later reads hit written blocks."""
    return job("fill", "write", MIB, 16, phase="fill")


def _measured(name: str, rw: str, bs: int, qd: int, ctx: SuiteContext, *extra: tuple[str, str]) -> FioJob:
    return job(name, rw, bs, qd, (*timed(ctx.runtime_s, ctx.ramp_s), *extra), log_latency=True)


def quick(ctx: SuiteContext) -> Program:
    """4k random read/write/70-30 at QD32, 1M sequential read/write at QD32, 4k QD1 read and write latency."""
    jobs = [_fill_job(ctx)] if ctx.needs_fill else []
    jobs += [
        _measured("randwrite-4k-qd32", "randwrite", 4 * KIB, 32, ctx),
        _measured("randread-4k-qd32", "randread", 4 * KIB, 32, ctx),
        _measured("randrw70-4k-qd32", "randrw", 4 * KIB, 32, ctx, ("rwmixread", "70")),
        _measured("write-1m-qd32", "write", MIB, 32, ctx),
        _measured("read-1m-qd32", "read", MIB, 32, ctx),
        _measured("randread-4k-qd1", "randread", 4 * KIB, 1, ctx),
        _measured("randwrite-4k-qd1", "randwrite", 4 * KIB, 1, ctx),
    ]
    yield _invocation(ctx, jobs)
    return SuiteOutcome()


def sweep(ctx: SuiteContext) -> Program:
    """IOPS and p99 against queue depth, random read then random write, one job per point."""
    jobs = [_fill_job(ctx)] if ctx.needs_fill else []
    for rw in ("randread", "randwrite"):
        jobs += [_measured(f"{rw}-4k-qd{qd}", rw, 4 * KIB, qd, ctx) for qd in ctx.qds]
    yield _invocation(ctx, jobs)
    return SuiteOutcome()


def latency_under_load(ctx: SuiteContext) -> Program:
    """Tail latency where a cloud runs: at ~75 % of the measured maximum, not at saturation nor idle."""
    first = [_fill_job(ctx)] if ctx.needs_fill else []
    first.append(
        job(
            "max-randread-4k-qd32",
            "randread",
            4 * KIB,
            32,
            timed(ctx.runtime_s, ctx.ramp_s),
            phase="max-iops",
        )
    )
    results = yield _invocation(ctx, first)
    peak = next(r for r in results if r.phase == "max-iops").iops
    rate = int(peak * ctx.load_fraction)
    if rate < 1:
        raise InvalidInput(f"measured maximum of {peak:.1f} IOPS is too low to load at {ctx.load_fraction:.0%}")
    pct = round(ctx.load_fraction * 100)
    yield _invocation(
        ctx,
        [_measured(f"randread-4k-qd32-at{pct}pct", "randread", 4 * KIB, 32, ctx, ("rate_iops", str(rate)))],
    )
    return SuiteOutcome()


def _round_jobs(ctx: SuiteContext, number: int) -> list[FioJob]:
    cells = [(4 * KIB, 100)]
    if ctx.snia_matrix == "reduced":
        cells = [(bs, w) for bs in (4 * KIB, 64 * KIB) for w in (100, 65, 0)]
    jobs = []
    for bs, write_pct in cells:
        name = f"r{number}-{bs // KIB}k-w{write_pct}"
        jobs.append(
            job(
                name,
                "randrw",
                bs,
                32,
                (*timed(ctx.runtime_s, ctx.ramp_s), ("rwmixwrite", str(write_pct))),
                phase=f"round-{number}",
            )
        )
    return jobs


def _window_cells(rounds: list[list[JobResult]]) -> list[WindowCell]:
    """Average each matrix cell over the window's rounds (cell = job name without its round prefix)."""
    by_cell: dict[str, list[JobResult]] = {}
    for results in rounds:
        for result in results:
            by_cell.setdefault(result.name.split("-", 1)[1], []).append(result)
    cells = []
    for cell, jobs in by_cell.items():
        p99s = [d.latency.p99 for j in jobs if (d := j.main_direction()) and d.latency.p99 is not None]
        cells.append(
            WindowCell(
                cell=cell, iops=sum(j.iops for j in jobs) / len(jobs), p99_ns=sum(p99s) / len(p99s) if p99s else None
            )
        )
    return cells


def snia(ctx: SuiteContext) -> Program:
    """SNIA SSS PTS IOPS-style: purge, workload-independent preconditioning, rounds until steady state."""
    outcome = SuiteOutcome()
    yield Purge(ctx.filename, ctx.kind)
    pre_bytes = ctx.precondition_bytes or 2 * ctx.size_bytes
    if pre_bytes < 2 * ctx.size_bytes:
        outcome.warnings.append(
            f"preconditioning capped at {pre_bytes} bytes, less than the 2 × capacity the PTS asks for"
        )
    yield _invocation(
        ctx,
        [job("precondition", "write", 128 * KIB, 32, (("io_size", str(pre_bytes)),), phase="precondition")],
    )
    tracking: list[float] = []
    per_round: list[list[JobResult]] = []
    for number in range(1, ctx.max_rounds + 1):
        results = yield _invocation(ctx, _round_jobs(ctx, number))
        per_round.append(results)
        tracked = next(r for r in results if r.name == f"r{number}-4k-w100")
        tracking.append(tracked.iops)
        if first_steady_window(tracking[-WINDOW:]) is not None:
            break
    found = first_steady_window(tracking)
    check = found or latest_window(tracking)
    outcome.steady_state = SteadyState(
        tracking="4k random write IOPS (QD32)",
        reached=found is not None,
        round=found.start + WINDOW if found else None,
        window=tracking[check.start : check.start + WINDOW] if check else [],
        window_avg=check.average if check else None,
        range_pct=check.range_frac * 100 if check else None,
        slope_pct=check.slope_frac * 100 if check else None,
        rounds=tracking,
        cells=_window_cells(per_round[check.start : check.start + WINDOW]) if check else [],
    )
    if found is None:
        outcome.warnings.append(f"no steady state within {len(tracking)} rounds: results are not PTS steady-state")
    return outcome


SUITES: dict[str, Callable[[SuiteContext], Program]] = {
    "quick": quick,
    "sweep": sweep,
    "latency-under-load": latency_under_load,
    "snia": snia,
}


def program(name: str, ctx: SuiteContext) -> Program:
    try:
        return SUITES[name](ctx)
    except KeyError:
        raise InvalidInput(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}") from None
