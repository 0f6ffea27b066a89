"""The versioned bench result: one `BenchRun` per `kvmkit bench run`, the same object `--json` prints.

Why versioned: results are compared across machines and months (`bench compare`), so a file must say which
shape it has. `SCHEMA` changes only when a field changes meaning or disappears;
adding optional fields keeps it.
Latencies are nanoseconds and rates are per second everywhere, so no reader has to guess units.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kvmkit.errors import InvalidInput, NotFound, validated

SCHEMA = "kvmkit.bench.run/1"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Percentiles(_Record):
    """Latency in ns. Tails first-class: a mean alone hides the stalls that users feel."""

    mean: float
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p99_9: float | None = None
    p99_99: float | None = None
    max: float


class LatencyPoint(_Record):
    """One bucket of fio's latency log: seconds since the job started, mean and max latency in ns."""

    t_s: float
    mean_ns: float
    max_ns: float


class DirectionResult(_Record):
    iops: float
    bw_bytes: float
    ios: int
    latency: Percentiles
    latency_kind: Literal["lat", "clat"] = "lat"  # lat = submission + completion (what the application waits)


class JobResult(_Record):
    """One fio job (one rw/bs/QD point) as measured."""

    name: str
    phase: str  # "measure", "fill", "precondition", "max-iops", "round-3" …
    rw: str
    bs: int
    iodepth: int
    numjobs: int = 1
    rate_iops: int | None = None
    runtime_s: float
    read: DirectionResult | None = None
    write: DirectionResult | None = None
    usr_cpu_pct: float
    sys_cpu_pct: float
    cpu_us_per_io: float | None = None  # host (or guest) CPU time fio spent per completed I/O
    latency_series: list[LatencyPoint] = []
    error: int = 0

    @property
    def iops(self) -> float:
        return sum(d.iops for d in (self.read, self.write) if d is not None)

    @property
    def bw_bytes(self) -> float:
        return sum(d.bw_bytes for d in (self.read, self.write) if d is not None)

    def main_direction(self) -> DirectionResult | None:
        """The direction that names the job (write for write jobs, read otherwise) — what tables show."""
        if self.rw in ("write", "randwrite", "trimwrite"):
            return self.write
        return self.read or self.write


class Machine(_Record):
    hostname: str
    kernel: str
    cpu_model: str
    cpus: int
    ram_bytes: int
    runner: str  # "host", later "vm:NAME"


class TargetInfo(_Record):
    path: str
    kind: Literal["file", "block"]
    size_bytes: int  # the working set fio used
    created: bool  # kvmkit created the file for this run
    filesystem: str | None = None
    destructive: bool = False


class WindowCell(_Record):
    """One cell of the round matrix (block size × write share), averaged over the reported window: what the
    PTS tabulates as the steady-state result."""

    cell: str  # "4k-w100" …
    iops: float
    p99_ns: float | None


class SteadyState(_Record):
    """SNIA PTS steady state over the tracking variable (4k random write IOPS)."""

    tracking: str
    reached: bool
    round: int | None  # 1-based round at which the 5-round window first qualified
    window: list[float] = []
    window_avg: float | None = None
    range_pct: float | None = None  # (max-min) / avg × 100, must be ≤ 20
    slope_pct: float | None = None  # |slope| × (n-1) / avg × 100, must be ≤ 10
    rounds: list[float] = []
    cells: list[WindowCell] = []  # averages over the window (the steady one, else the last)


class Resources(_Record):
    wall_s: float
    fio_wall_s: float
    kvmkit_peak_rss_kib: int
    fio_peak_rss_kib: int


class SuiteParams(_Record):
    size_bytes: int
    runtime_s: float
    ramp_s: float
    ioengine: str
    extra: dict[str, float | int | str] = {}


class BenchRun(_Record):
    schema_: str = Field(SCHEMA, alias="schema")
    label: str
    suite: str
    status: Literal["ok", "failed"]  # failed: error says why; jobs hold what was measured before
    error: str | None = None
    started_at: datetime
    finished_at: datetime
    machine: Machine
    fio_version: str
    target: TargetInfo
    params: SuiteParams
    jobs: list[JobResult]
    steady_state: SteadyState | None = None
    warnings: list[str] = []
    fio_commands: list[list[str]] = []
    resources: Resources

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def measured(self) -> list[JobResult]:
        """Jobs that are results, not set-up (fill, precondition)."""
        return [j for j in self.jobs if j.phase not in ("fill", "precondition", "purge")]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2)


def load_run(path: Path) -> BenchRun:
    """Read a result file, refusing other schemas loudly rather than comparing apples with pears."""
    if not path.is_file():
        raise NotFound(f"result file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not JSON: {exc}") from None
    found = data.get("schema") if isinstance(data, dict) else None
    if found != SCHEMA:
        raise InvalidInput(f"{path}: schema {found!r} is not {SCHEMA!r}; not a kvmkit bench result of this version")
    return validated(BenchRun, data, path)
