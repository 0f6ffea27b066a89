"""`run_suite`: preflight checks, then a suite's program driven through a Runner, into one BenchRun.

Order matters for safety: fio's version, the target probe and the plan are all checked before anything is
written. Once fio has started, a failure (fio error, a VM that vanished) does not lose what was measured:
the run comes back with status "failed", the error, and the jobs completed so far.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from kvmkit.bench.fio import chain, fold_latency_log, load_report, parse_report, require_version
from kvmkit.bench.jobs import FioInvocation
from kvmkit.bench.lint import SYNC_ENGINES
from kvmkit.bench.runner import Completed, Runner
from kvmkit.bench.schema import BenchRun, JobResult, Resources, SteadyState, SuiteParams, TargetInfo
from kvmkit.bench.suites import SUITES, Purge, SuiteContext, program
from kvmkit.bench.target import TargetPlan, plan_target
from kvmkit.errors import InvalidInput, KvmkitError, OperationFailed

log = logging.getLogger(__name__)
MAX_POINTS = 300  # latency-over-time buckets per job: enough for a plot, bounded whatever the runtime


@dataclass(frozen=True)
class BenchOptions:
    size_bytes: int | None = None  # None: the device, or 2 × RAM for a new file
    destructive: str | None = None  # must equal the target path to overwrite data / a device
    runtime_s: float = 30.0
    ramp_s: float = 5.0
    ioengine: str = "io_uring"
    qds: tuple[int, ...] | None = None  # sweep points; None = 1…128
    max_rounds: int = 25  # snia
    precondition_bytes: int | None = None  # snia; None = 2 × size
    snia_matrix: str = "reduced"
    keep_file: bool = False  # keep a file kvmkit created (and filled) for the next run
    label: str | None = None
    fio: str = "fio"


@dataclass
class _Tally:
    fio_wall_s: float = 0.0
    fio_peak_rss_kib: int = 0


def _check_fio(runner: Runner, fio: str) -> str:
    done = runner.run([fio, "--version"], timeout_s=30)
    if done.returncode != 0:
        raise OperationFailed(f"{fio} --version failed: {done.stderr.strip()[:200]}")
    return require_version(done.stdout)


def _fio_error(done: Completed) -> str:
    lines = [ln for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.startswith("fio:") or "error" in ln]
    return lines[0].strip() if lines else f"exit code {done.returncode}"


def _timeout(inv: FioInvocation, ctx: SuiteContext) -> float:
    # Fill and precondition jobs are sized, not timed: allow for a slow device (10 MiB/s) on top.
    sized = sum(1 for j in inv.jobs if j.phase in ("fill", "precondition"))
    timed = len(inv.jobs) - sized
    return 120 + timed * (ctx.runtime_s + ctx.ramp_s) * 2 + sized * ctx.size_bytes * 2 / (10 * 1024 * 1024)


def _execute(runner: Runner, inv: FioInvocation, ctx: SuiteContext, fio: str, tally: _Tally) -> list[JobResult]:
    argv = inv.argv(fio)
    log.info("fio start", extra={"jobs": [j.name for j in inv.jobs]})
    done = runner.run(argv, timeout_s=_timeout(inv, ctx))
    tally.fio_wall_s += done.wall_s
    tally.fio_peak_rss_kib = max(tally.fio_peak_rss_kib, done.peak_rss_kib)
    if done.returncode != 0:
        raise OperationFailed(f"fio failed: {_fio_error(done)}")
    results = parse_report(load_report(done.stdout), inv)
    failed = [r.name for r in results if r.error]
    if failed:
        raise OperationFailed(f"fio reported an error in job(s) {', '.join(failed)}: {_fio_error(done)}")
    bucket_s = max(0.1, (ctx.runtime_s + ctx.ramp_s) / MAX_POINTS)
    by_name = {job.name: job for job in inv.jobs}
    with_series = []
    for result in results:
        job = by_name.get(result.name)
        files = inv.log_files(job) if job else []
        if files:
            series = fold_latency_log(chain(*(runner.read_lines(f) for f in files)), bucket_s)
            result = result.model_copy(update={"latency_series": series})
        with_series.append(result)
    return with_series


def _purge(runner: Runner, step: Purge) -> str | None:
    """Discard the target so preconditioning starts from a known state; a warning when it cannot."""
    argv = ["blkdiscard", step.path] if step.kind == "block" else ["truncate", "-s", "0", step.path]
    try:
        done = runner.run(argv, timeout_s=600)
    except KvmkitError as exc:
        return f"purge skipped: {exc}"
    if done.returncode != 0:
        return f"purge not possible ({' '.join(argv)}: {done.stderr.strip()[:120]}); preconditioning only"
    if step.kind == "file":
        runner.claim(step.path, filled_bytes=0)  # emptied: the recorded fill no longer holds
    return None


def _context(suite: str, plan: TargetPlan, opts: BenchOptions, log_dir: str) -> SuiteContext:
    extra = {"qds": opts.qds} if opts.qds else {}
    return SuiteContext(
        filename=plan.path,
        kind=plan.kind,
        size_bytes=plan.size_bytes,
        ioengine=opts.ioengine,
        runtime_s=opts.runtime_s,
        ramp_s=opts.ramp_s,
        needs_fill=plan.needs_fill,
        log_dir=log_dir,
        max_rounds=opts.max_rounds,
        precondition_bytes=opts.precondition_bytes,
        snia_matrix=opts.snia_matrix,
        **extra,
    )


def _validate(suite: str, opts: BenchOptions) -> None:
    if suite not in SUITES:
        raise InvalidInput(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}")
    if opts.runtime_s <= 0 or opts.ramp_s < 0:
        raise InvalidInput("--runtime must be > 0 s and --ramp ≥ 0 s")
    if opts.qds and any(q < 1 or q > 4096 for q in opts.qds):
        raise InvalidInput("queue depths must be between 1 and 4096")
    if opts.snia_matrix not in ("reduced", "tracking"):
        raise InvalidInput("--snia-matrix must be 'reduced' or 'tracking'")
    if opts.ioengine in SYNC_ENGINES:
        raise InvalidInput(f"--ioengine {opts.ioengine} is synchronous: the suites' queue depths would be ignored")
    if opts.max_rounds < 5:
        raise InvalidInput("--max-rounds must be at least 5 (the steady-state window)")


def run_suite(suite: str, target: str, runner: Runner, options: BenchOptions | None = None) -> BenchRun:
    """Run one suite against one target through `runner`; the result whether it completed or failed part-way.

    Raises (before writing anything) for bad input: unknown suite, missing/unsafe target, too little space,
    fio missing or too old.
    """
    opts = options or BenchOptions()
    _validate(suite, opts)
    started, clock = datetime.now(UTC), time.monotonic()
    fio_version = _check_fio(runner, opts.fio)
    machine = runner.machine()
    plan = plan_target(runner.probe(target), opts.size_bytes, opts.destructive)
    for warning in plan.warnings:
        log.info("target warning: %s", warning)

    jobs: list[JobResult] = []
    commands: list[list[str]] = []
    warnings = list(plan.warnings)
    steady: SteadyState | None = None
    status, error = "ok", None
    tally = _Tally()
    if plan.kind == "file":
        runner.claim(plan.path)
    try:
        with runner.scratch() as log_dir:
            ctx = _context(suite, plan, opts, log_dir)
            prog = program(suite, ctx)
            try:
                step = next(prog)
                while True:
                    if isinstance(step, Purge):
                        note = _purge(runner, step)
                        warnings += [note] if note else []
                        step = prog.send([])
                        continue
                    commands.append(step.argv(opts.fio))
                    batch = _execute(runner, step, ctx, opts.fio, tally)
                    jobs += batch
                    if plan.kind == "file" and any(r.phase in ("fill", "precondition") for r in batch):
                        runner.claim(plan.path, filled_bytes=plan.size_bytes)
                    step = prog.send(batch)
            except StopIteration as stop:
                steady = stop.value.steady_state
                warnings += stop.value.warnings
    except KvmkitError as exc:
        status, error = "failed", str(exc)
        log.error("bench run failed after %d jobs: %s", len(jobs), exc)
    finally:
        if plan.create and not opts.keep_file:
            runner.remove(plan.path)

    return BenchRun(
        label=opts.label or f"{suite}@{runner.name}:{target}",
        suite=suite,
        status=status,
        error=error,
        started_at=started,
        finished_at=datetime.now(UTC),
        machine=machine,
        fio_version=fio_version,
        target=TargetInfo(
            path=plan.path,
            kind=plan.kind,
            size_bytes=plan.size_bytes,
            created=plan.create,
            filesystem=plan.filesystem,
            destructive=plan.destructive,
        ),
        params=SuiteParams(
            size_bytes=plan.size_bytes,
            runtime_s=opts.runtime_s,
            ramp_s=opts.ramp_s,
            ioengine=opts.ioengine,
            extra={"qds": ",".join(map(str, opts.qds))} if opts.qds else {},
        ),
        jobs=jobs,
        steady_state=steady,
        warnings=warnings,
        fio_commands=commands,
        resources=Resources(
            wall_s=time.monotonic() - clock,
            fio_wall_s=tally.fio_wall_s,
            kvmkit_peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            fio_peak_rss_kib=tally.fio_peak_rss_kib,
        ),
    )
