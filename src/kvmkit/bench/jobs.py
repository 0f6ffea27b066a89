"""fio jobs as data, rendered two ways from one structure: an argument list (what kvmkit runs) and INI text
(what a person reads, what `bench lint` checks, what the result file records).

Why arguments and not a job file: the same argv runs unchanged through a host subprocess or a guest agent's
guest-exec, with no file to copy into the guest first. fio treats options before the first --name as global
and options after a --name as that job's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Options every kvmkit job carries, whatever the suite: each one closes a way to measure the wrong thing.
GOOD_PRACTICE: tuple[tuple[str, str], ...] = (
    ("direct", "1"),  # O_DIRECT: the device, not the page cache
    ("refill_buffers", "1"),  # fresh random data for every I/O: incompressible, not dedupable
    ("randrepeat", "0"),  # different offsets each run, so no cache learns the sequence
    ("norandommap", "1"),  # no per-block bitmap: memory stays bounded on terabyte targets …
    ("random_generator", "tausworthe64"),  # … and the generator covers them without wrapping
    ("lat_percentiles", "1"),  # percentiles of total latency (submit + complete), what an application waits
    ("percentile_list", "50:90:99:99.9:99.99"),
    ("group_reporting", "1"),  # numjobs clones of one job are reported as one
)

PERCENTILE_KEYS = {
    "p50": "50.000000",
    "p90": "90.000000",
    "p99": "99.000000",
    "p99_9": "99.900000",
    "p99_99": "99.990000",
}


@dataclass(frozen=True)
class FioJob:
    """One fio job section. `phase` is kvmkit's label (measure, fill, round-3 …), never passed to fio."""

    name: str
    options: tuple[tuple[str, str], ...]
    phase: str = "measure"
    numjobs: int = 1
    log_latency: bool = False

    def option(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.options:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class FioInvocation:
    """One fio process: global options plus jobs run one after another (stonewall)."""

    global_options: tuple[tuple[str, str], ...]
    jobs: tuple[FioJob, ...]
    log_dir: str | None = None  # where latency logs go, on the machine fio runs on
    log_avg_msec: int = 100
    extra_args: tuple[str, ...] = field(default=())

    def log_prefix(self, job: FioJob) -> str | None:
        if not (job.log_latency and self.log_dir):
            return None
        return f"{self.log_dir.rstrip('/')}/{job.name}"

    def log_files(self, job: FioJob) -> list[str]:
        """fio numbers latency logs by global job instance (1-based, numjobs clones counted); predictable."""
        prefix = self.log_prefix(job)
        if prefix is None:
            return []
        first = 1
        for other in self.jobs:
            if other is job:
                break
            first += other.numjobs
        return [f"{prefix}_lat.{i}.log" for i in range(first, first + job.numjobs)]

    def _job_options(self, job: FioJob, index: int) -> list[tuple[str, str]]:
        opts = list(job.options)
        if job.numjobs != 1:
            opts.append(("numjobs", str(job.numjobs)))
        if index > 0:
            opts.append(("stonewall", "1"))
        prefix = self.log_prefix(job)
        if prefix:
            opts += [("write_lat_log", prefix), ("log_avg_msec", str(self.log_avg_msec))]
        return opts

    def argv(self, fio: str = "fio") -> list[str]:
        """The command line, an argument list: never a shell string."""
        args = [fio, "--output-format=json", *self.extra_args]
        args += [f"--{k}={v}" for k, v in self.global_options]
        for index, job in enumerate(self.jobs):
            args.append(f"--name={job.name}")
            args += [f"--{k}={v}" for k, v in self._job_options(job, index)]
        return args

    def ini(self) -> str:
        """The same jobs as a fio job file, e.g. to save, lint or run by hand with `fio FILE`."""
        lines = ["[global]", *(f"{k}={v}" for k, v in self.global_options)]
        for index, job in enumerate(self.jobs):
            lines += ["", f"[{job.name}]", *(f"{k}={v}" for k, v in self._job_options(job, index))]
        return "\n".join(lines) + "\n"

    def phase_of(self, jobname: str) -> str:
        for job in self.jobs:
            if job.name == jobname:
                return job.phase
        return "measure"


def global_options(
    filename: str, size_bytes: int, ioengine: str, extra: Mapping[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    opts = [("filename", filename), ("size", str(size_bytes)), ("ioengine", ioengine), *GOOD_PRACTICE]
    opts += list((extra or {}).items())
    return tuple(opts)


def timed(runtime_s: float, ramp_s: float) -> list[tuple[str, str]]:
    """Time-based options in milliseconds: fio reads a bare `runtime=0.5` as 0 seconds."""
    opts = [("time_based", "1"), ("runtime", f"{max(1, round(runtime_s * 1000))}ms")]
    if ramp_s > 0:
        opts.append(("ramp_time", f"{round(ramp_s * 1000)}ms"))
    return opts


def job(name: str, rw: str, bs: int, iodepth: int, extra: Iterable[tuple[str, str]] = (), **kw: object) -> FioJob:
    options = (("rw", rw), ("bs", str(bs)), ("iodepth", str(iodepth)), *extra)
    return FioJob(name=name, options=options, **kw)  # type: ignore[arg-type]
