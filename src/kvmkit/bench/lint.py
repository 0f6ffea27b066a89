"""`kvmkit bench lint JOB.fio`: the classic storage-benchmark mistakes, found in a user's own fio job file.

Each rule has a stable code, a severity and a sentence that says what goes wrong in the measurement, so
the finding teaches and not only complains. Errors make the result meaningless (page cache, zeros, an
ignored iodepth); warnings make it optimistic or noisy. kvmkit's own generated suites lint clean (tested).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kvmkit.bench.units import format_size
from kvmkit.errors import InvalidInput, NotFound

SYNC_ENGINES = {"sync", "psync", "vsync", "pvsync", "pvsync2"}  # one I/O at a time, whatever iodepth says
READS = {"read", "randread", "rw", "readwrite", "randrw", "trimwrite"}
WRITES = {"write", "randwrite", "rw", "readwrite", "randrw", "trimwrite"}
TRUE = {"1", "true", "yes", "on", ""}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # "error" | "warning"
    job: str
    line: int
    message: str

    def render(self, path: str) -> str:
        return f"{path}:{self.line}: {self.code} {self.severity} [{self.job}] {self.message}"


@dataclass
class JobSection:
    name: str
    line: int
    options: dict[str, str]
    lines: dict[str, int]


_SECTION = re.compile(r"^\[([^\]]+)\]\s*$")


def parse_jobfile(text: str) -> list[JobSection]:
    """fio's INI dialect: [global] sections apply to the jobs after them; bare keys are booleans."""
    globals_: dict[str, str] = {}
    global_lines: dict[str, int] = {}
    jobs: list[JobSection] = []
    current: JobSection | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        header = _SECTION.match(line)
        if header:
            name = header.group(1).strip()
            current = None if name == "global" else JobSection(name, number, dict(globals_), dict(global_lines))
            if current is not None:
                jobs.append(current)
            continue
        key, _, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key.startswith("include "):
            raise InvalidInput(f"line {number}: 'include' is not followed by kvmkit bench lint; inline the file")
        if current is None:
            globals_[key], global_lines[key] = value, number
        else:
            current.options[key], current.lines[key] = value, number
    return jobs


def _size(value: str | None) -> int | None:
    if not value or "%" in value or "$" in value:
        return None
    match = re.match(r"^(\d+)([kmgtp]?)i?b?$", value.strip().lower())
    if not match:
        return None
    return int(match.group(1)) * 1024 ** " kmgtp".index(match.group(2) or " ")


def _is(opts: dict[str, str], key: str) -> bool:
    return key in opts and opts[key].lower() in TRUE


def _rw(opts: dict[str, str]) -> str:
    return opts.get("rw", opts.get("readwrite", "read")).split(":")[0].lower()


def check_job(job: JobSection, earlier_write: bool, ram_bytes: int) -> list[Finding]:
    opts, out = job.options, []

    def flag(code: str, severity: str, key: str | None, message: str) -> None:
        out.append(Finding(code, severity, job.name, job.lines.get(key, job.line) if key else job.line, message))

    rw, engine = _rw(opts), opts.get("ioengine", "psync").lower()
    direct = _is(opts, "direct") or opts.get("buffered", "1").lower() in {"0", "false", "no", "off"}
    if not direct:
        flag(
            "KB101",
            "error",
            "direct",
            "buffered I/O (no direct=1): the page cache is measured, not the device",
        )
    if engine == "libaio" and not direct:
        flag(
            "KB102",
            "error",
            "ioengine",
            "libaio on buffered I/O blocks in io_submit: the queue depth is never reached",
        )
    depth = int(opts.get("iodepth", "1")) if opts.get("iodepth", "1").isdigit() else 1
    if engine in SYNC_ENGINES and depth > 1:
        flag(
            "KB103",
            "error",
            "iodepth",
            f"iodepth={depth} with the synchronous engine {engine}: only one I/O is ever "
            "in flight; use ioengine=io_uring or libaio",
        )
    writes = rw in WRITES
    if _is(opts, "zero_buffers"):
        flag(
            "KB104",
            "error",
            "zero_buffers",
            "zero_buffers: all-zero data is compressed, deduplicated or skipped "
            "by thin storage; the device barely works",
        )
    elif writes and not _is(opts, "refill_buffers"):
        flag(
            "KB105",
            "warning",
            None,
            "no refill_buffers: fio reuses buffer contents, which dedupe/compression can exploit; add refill_buffers=1",
        )
    for key in ("buffer_compress_percentage", "dedupe_percentage"):
        if writes and opts.get(key, "0") not in ("0", ""):
            flag(
                "KB106",
                "warning",
                key,
                f"{key}={opts[key]}: the data is made compressible/dedupable on purpose; "
                "results only hold for storage that sees the same ratio",
            )
    if (_is(opts, "time_based") or "runtime" in opts) and "ramp_time" not in opts:
        flag(
            "KB107",
            "warning",
            None,
            "no ramp_time: start-up transients (empty queues, cold caches) are averaged in",
        )
    if rw in READS and not earlier_write and opts.get("filename", "").startswith("/dev/"):
        flag(
            "KB108",
            "warning",
            "rw",
            "reads of a device no earlier job wrote: never-written or trimmed blocks are "
            "answered without touching media; fill it first (a write job before, with stonewall)",
        )
    size = _size(opts.get("size") or opts.get("filesize"))
    if size is not None and ram_bytes and size < 2 * ram_bytes:
        flag(
            "KB109",
            "warning",
            "size" if "size" in opts else "filesize",
            f"working set {format_size(size)} < 2 × RAM ({format_size(2 * ram_bytes)}): a cache can hold it",
        )
    if opts.get("clat_percentiles", "1") in ("0", "false") and not _is(opts, "lat_percentiles"):
        flag(
            "KB110",
            "warning",
            "clat_percentiles",
            "percentiles switched off: only averages remain, tails are hidden",
        )
    elif "percentile_list" in opts and "99.9" not in opts["percentile_list"].split(":"):
        flag(
            "KB110",
            "warning",
            "percentile_list",
            "percentile_list without 99.9: the tail users feel is not reported",
        )
    if int(opts.get("numjobs", "1") or 1) > 1 and not _is(opts, "group_reporting"):
        flag(
            "KB111",
            "warning",
            "numjobs",
            "numjobs > 1 without group_reporting: per-clone results, easy to misread",
        )
    runtime = _seconds(opts.get("runtime"))
    if _is(opts, "time_based") and runtime is not None and runtime < 10:
        flag("KB112", "warning", "runtime", f"runtime {runtime:g} s: too short for a stable result; use ≥ 10 s")
    return out


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    match = re.match(r"^(\d+(?:\.\d+)?)(ms|us|s|m|h)?$", value.strip().lower())
    if not match:
        return None
    scale = {"ms": 1e-3, "us": 1e-6, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


def lint_text(text: str, ram_bytes: int) -> list[Finding]:
    jobs = parse_jobfile(text)
    if not jobs:
        raise InvalidInput("no job section: a fio job file needs at least one [name] section besides [global]")
    findings: list[Finding] = []
    wrote = False
    for job in jobs:
        findings += check_job(job, wrote, ram_bytes)
        wrote = wrote or _rw(job.options) in WRITES
    return findings


def lint_file(path: Path, ram_bytes: int) -> list[Finding]:
    if not path.is_file():
        raise NotFound(f"job file {path} does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not a text job file") from None
    return lint_text(text, ram_bytes)
