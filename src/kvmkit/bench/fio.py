"""Reading what fio says: its version, its JSON report and its latency logs. Pure functions over text.

fio's JSON layout (3.x): jobs[i].{jobname, error, job_runtime (ms), usr_cpu, sys_cpu (% of one CPU),
read|write: {iops, bw_bytes, total_ios, lat_ns|clat_ns: {mean, max, percentile{"99.000000": ns}}}}.
fio may print warnings ("fio: ...") on stdout around the JSON, so the report is the object at the first '{'.
Latency logs are "time_ms, value_ns, ddir, bs, offset[, prio]" lines; they are read as a stream and folded
into a fixed number of buckets, so a long run never holds the whole log in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from kvmkit.bench.jobs import PERCENTILE_KEYS, FioInvocation
from kvmkit.bench.schema import DirectionResult, JobResult, LatencyPoint, Percentiles
from kvmkit.errors import EnvironmentProblem, OperationFailed

MIN_VERSION = (3, 16)  # io_uring engine, lat_percentiles in JSON, `job_runtime`
_VERSION = re.compile(r"fio-(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int]:
    match = _VERSION.search(text)
    if not match:
        raise EnvironmentProblem(f"cannot tell fio's version from {text.strip()[:60]!r}")
    return int(match.group(1)), int(match.group(2))


def require_version(text: str) -> str:
    """The version string, or EnvironmentProblem when fio is older than what kvmkit's jobs need."""
    major, minor = parse_version(text)
    if (major, minor) < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise EnvironmentProblem(f"fio {major}.{minor} is too old: kvmkit bench needs fio ≥ {need} (io_uring, JSON)")
    return f"fio-{major}.{minor}"


def load_report(stdout: str) -> dict[str, Any]:
    """fio's JSON document, skipping any warning lines fio printed before it."""
    start = stdout.find("{")
    if start < 0:
        raise OperationFailed(f"fio printed no JSON report: {stdout.strip()[:200]!r}")
    try:
        # raw_decode: fio can also print lines *after* the report ("fio: file hash not empty on exit").
        report, _ = json.JSONDecoder().raw_decode(stdout, start)
    except json.JSONDecodeError as exc:
        raise OperationFailed(f"fio's JSON report is malformed: {exc}") from None
    if "jobs" not in report and "client_stats" not in report:
        raise OperationFailed("fio's JSON report has neither jobs nor client_stats")
    return report


def _direction(data: dict[str, Any] | None) -> DirectionResult | None:
    if not data or not data.get("total_ios"):
        return None
    kind = "lat" if data.get("lat_ns", {}).get("percentile") else "clat"
    lat = data.get(f"{kind}_ns", {})
    pct = lat.get("percentile", {})
    return DirectionResult(
        iops=float(data["iops"]),
        bw_bytes=float(data["bw_bytes"]),
        ios=int(data["total_ios"]),
        latency=Percentiles(
            mean=float(lat.get("mean", 0.0)),
            max=float(lat.get("max", 0.0)),
            **{field: (float(pct[key]) if key in pct else None) for field, key in PERCENTILE_KEYS.items()},
        ),
        latency_kind=kind,
    )


def _int_option(options: dict[str, str], key: str, default: int) -> int:
    value = options.get(key)
    if value is None:
        return default
    return int(value)


def parse_job(data: dict[str, Any], phase: str, global_options: dict[str, str]) -> JobResult:
    """One fio job's JSON into a JobResult; CPU per I/O = (usr+sys)% × runtime ÷ completed I/Os."""
    options = {**global_options, **data.get("job options", {})}
    read, write = _direction(data.get("read")), _direction(data.get("write"))
    runtime_s = float(data.get("job_runtime", 0)) / 1000
    ios = sum(d.ios for d in (read, write) if d is not None)
    usr, sys_ = float(data.get("usr_cpu", 0.0)), float(data.get("sys_cpu", 0.0))
    cpu_us = (usr + sys_) / 100 * runtime_s * 1e6 / ios if ios else None
    rate = options.get("rate_iops")
    return JobResult(
        name=data["jobname"],
        phase=phase,
        rw=options.get("rw", options.get("readwrite", "read")),
        bs=_int_option(options, "bs", 4096),
        iodepth=_int_option(options, "iodepth", 1),
        numjobs=_int_option(options, "numjobs", 1),
        rate_iops=int(rate.split(",")[0]) if rate else None,
        runtime_s=runtime_s,
        read=read,
        write=write,
        usr_cpu_pct=usr,
        sys_cpu_pct=sys_,
        cpu_us_per_io=cpu_us,
        error=int(data.get("error", 0)),
    )


def parse_report(report: dict[str, Any], invocation: FioInvocation | None = None) -> list[JobResult]:
    """All jobs of one report; fio --client's `client_stats` is read like `jobs`, minus "All clients"."""
    globals_ = {k: str(v) for k, v in report.get("global options", {}).items()}
    entries = report.get("jobs") or [j for j in report.get("client_stats", []) if j.get("jobname") != "All clients"]
    results = []
    for entry in entries:
        phase = invocation.phase_of(entry["jobname"]) if invocation else "measure"
        results.append(parse_job(entry, phase, globals_))
    return results


def fold_latency_log(lines: Iterable[str], bucket_s: float) -> list[LatencyPoint]:
    """Stream a latency log (or several, concatenated) into buckets of `bucket_s` seconds.

    Memory is one accumulator per bucket, whatever the log's length. With log_avg_msec each line is already
    a window mean, so a bucket's `max_ns` is its worst window mean, not the single slowest I/O.
    """
    sums: dict[int, list[float]] = {}
    for line in lines:
        fields = line.split(",", 2)
        if len(fields) < 2:
            continue
        try:
            t_ms, value = float(fields[0]), float(fields[1])
        except ValueError:
            continue
        acc = sums.setdefault(int(t_ms / 1000 / bucket_s), [0.0, 0.0, 0.0])
        acc[0] += value
        acc[1] += 1
        acc[2] = max(acc[2], value)
    return [
        LatencyPoint(t_s=round(b * bucket_s, 3), mean_ns=acc[0] / acc[1], max_ns=acc[2])
        for b, acc in sorted(sums.items())
    ]


def chain(*streams: Iterable[str]) -> Iterator[str]:
    for stream in streams:
        yield from stream
