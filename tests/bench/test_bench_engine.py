"""Real fio runs of every suite, short: results carry tails, CPU per I/O, latency over time and resources."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.probe import TargetProbe
from kvmkit.bench.runner import Completed, HostRunner
from kvmkit.bench.schema import SCHEMA, BenchRun, Machine
from kvmkit.errors import OperationFailed

SHORT = {"size_bytes": 64 * 1024 * 1024, "runtime_s": 1.0, "ramp_s": 0.0}

QUICK_JOBS = {
    "randwrite-4k-qd32",
    "randread-4k-qd32",
    "randrw70-4k-qd32",
    "write-1m-qd32",
    "read-1m-qd32",
    "randread-4k-qd1",
    "randwrite-4k-qd1",
}


def test_quick_measures_every_point_with_tails_and_cpu(quick_run: BenchRun):
    assert quick_run.status == "ok", quick_run.error
    assert quick_run.jobs[0].phase == "fill", "a fresh file is filled before it is read"
    assert {j.name for j in quick_run.measured()} == QUICK_JOBS
    for job in quick_run.measured():
        main = job.main_direction()
        assert main is not None and main.ios > 0 and job.iops > 0
        lat = main.latency
        # fio's percentiles are histogram bins (64 per power of two): up to 1/64 above the exact maximum.
        assert lat.p50 <= lat.p99 <= lat.p99_9 <= lat.max * (1 + 1 / 64), job.name
        assert job.cpu_us_per_io is not None and job.cpu_us_per_io > 0
        assert job.latency_series, f"{job.name}: no latency-over-time points from fio's log"
    mix = next(j for j in quick_run.jobs if j.name == "randrw70-4k-qd32")
    assert mix.read.ios > mix.write.ios > 0, "70/30 mix: more reads than writes"
    qd1, qd32 = (next(j for j in quick_run.jobs if j.name == n) for n in ("randread-4k-qd1", "randread-4k-qd32"))
    assert qd1.read.latency.p50 < qd32.read.latency.p50, "queueing: QD32 waits longer per I/O than QD1"


def test_quick_records_the_exact_fio_command_with_good_practice(quick_run: BenchRun):
    (argv,) = quick_run.fio_commands
    assert argv[0] == "fio" and "--output-format=json" in argv
    for option in ("--direct=1", "--refill_buffers=1", "--lat_percentiles=1", "--ioengine=io_uring"):
        assert option in argv
    assert not any("zero_buffers" in a for a in argv)


def test_result_records_machine_target_resources_and_round_trips_as_json(quick_run: BenchRun, tmp_path: Path):
    assert quick_run.fio_version.startswith("fio-3.")
    assert quick_run.machine.runner == "host" and quick_run.machine.ram_bytes > 0
    assert quick_run.target.created and quick_run.target.size_bytes == SHORT["size_bytes"]
    assert not Path(quick_run.target.path).exists(), "a file kvmkit created is removed unless --keep-file"
    res = quick_run.resources
    assert res.wall_s >= res.fio_wall_s > 0 and res.fio_peak_rss_kib > 0 and res.kvmkit_peak_rss_kib > 0
    assert any("2 × RAM" in w for w in quick_run.warnings)
    path = tmp_path / "r.json"
    path.write_text(quick_run.to_json())
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert BenchRun.model_validate(data) == quick_run


def test_latency_under_load_runs_at_three_quarters_of_the_measured_maximum(disk_dir: Path):
    run = run_suite(
        "latency-under-load", str(disk_dir / "lul.dat"), HostRunner(), BenchOptions(**{**SHORT, "runtime_s": 2.0})
    )
    assert run.status == "ok", run.error
    peak = next(j for j in run.jobs if j.phase == "max-iops")
    loaded = next(j for j in run.jobs if j.phase == "measure")
    assert loaded.rate_iops == int(peak.iops * 0.75)
    assert loaded.iops <= loaded.rate_iops * 1.05, "fio held the rate"
    assert loaded.read.latency.p99_9 is not None
    assert len(run.fio_commands) == 2 and f"--rate_iops={loaded.rate_iops}" in run.fio_commands[1]


def test_snia_preconditions_then_rounds_until_steady_or_the_cap(disk_dir: Path):
    opts = BenchOptions(**SHORT, snia_matrix="tracking", max_rounds=5, precondition_bytes=64 * 1024 * 1024)
    run = run_suite("snia", str(disk_dir / "snia.dat"), HostRunner(), opts)
    assert run.status == "ok", run.error
    phases = [j.phase for j in run.jobs]
    assert phases[0] == "precondition" and phases[1] == "round-1"
    pre = run.jobs[0]
    assert pre.write.ios * pre.bs == 64 * 1024 * 1024, "precondition wrote exactly the capped amount"
    assert any("capped" in w for w in run.warnings), "a precondition below 2 × capacity is said out loud"
    steady = run.steady_state
    assert steady is not None and len(steady.rounds) == 5
    assert steady.rounds == [j.iops for j in run.jobs[1:]]
    (cell,) = steady.cells
    assert cell.cell == "4k-w100" and cell.iops == pytest.approx(sum(steady.rounds) / 5)
    assert cell.p99_ns is not None and cell.p99_ns > 0
    if steady.reached:
        assert steady.round == len(steady.rounds) and steady.range_pct <= 20 and steady.slope_pct <= 10
    else:
        assert any("no steady state" in w for w in run.warnings)


class _VanishingRunner:
    """The host runner, except that the machine 'disappears' after N fio runs (a VM dying mid-run)."""

    def __init__(self, fio_runs_before_failure: int) -> None:
        self.inner = HostRunner()
        self.name = "vanishing"
        self.left = fio_runs_before_failure

    def machine(self) -> Machine:
        return self.inner.machine()

    def probe(self, path: str) -> TargetProbe:
        return self.inner.probe(path)

    def run(self, argv: Sequence[str], timeout_s: float) -> Completed:
        if argv[-1] != "--version":
            if self.left == 0:
                raise OperationFailed("guest agent went away (VM lab1 is gone)")
            self.left -= 1
        return self.inner.run(argv, timeout_s)

    def read_lines(self, path: str) -> Iterator[str]:
        return self.inner.read_lines(path)

    def scratch(self) -> AbstractContextManager[str]:
        return self.inner.scratch()

    def claim(self, path: str, filled_bytes: int | None = None) -> None:
        self.inner.claim(path, filled_bytes)

    def remove(self, path: str) -> None:
        self.inner.remove(path)


def test_failure_mid_run_keeps_partial_data_labelled_failed(disk_dir: Path):
    run = run_suite("latency-under-load", str(disk_dir / "gone.dat"), _VanishingRunner(1), BenchOptions(**SHORT))
    assert run.status == "failed" and "VM lab1 is gone" in run.error
    assert [j.phase for j in run.jobs] == ["fill", "max-iops"], "what was measured before the failure is kept"
    assert not (disk_dir / "gone.dat").exists()


def test_kept_file_is_reused_without_refill_or_destructive(disk_dir: Path):
    target = str(disk_dir / "keep.dat")
    opts = BenchOptions(**SHORT, qds=(4,), keep_file=True)
    first = run_suite("sweep", target, HostRunner(), opts)
    assert first.jobs[0].phase == "fill" and Path(target).stat().st_size == SHORT["size_bytes"]
    assert os.getxattr(target, "user.kvmkit.bench") == str(SHORT["size_bytes"]).encode(), "owned and filled"
    second = run_suite("sweep", target, HostRunner(), opts)
    assert second.status == "ok" and all(j.phase == "measure" for j in second.jobs), "filled once is enough"
    assert Path(target).exists(), "an existing file is never removed"


@pytest.mark.parametrize(
    ("suite", "opts"),
    [("nope", {}), ("sweep", {"qds": (0,)}), ("snia", {"max_rounds": 3}), ("quick", {"runtime_s": 0})],
)
def test_bad_options_are_refused_before_anything_runs(suite: str, opts: dict, disk_dir: Path):
    from kvmkit.errors import InvalidInput

    with pytest.raises(InvalidInput):
        run_suite(suite, str(disk_dir / "x.dat"), HostRunner(), BenchOptions(**{**SHORT, **opts}))
    assert list(disk_dir.iterdir()) == []
