"""fio's JSON and latency logs: a recorded fio 3.33 report for edge cases, streamed log folding."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmkit.bench.fio import fold_latency_log, load_report, parse_report, parse_version, require_version
from kvmkit.bench.units import format_size, parse_size
from kvmkit.errors import EnvironmentProblem, InvalidInput, OperationFailed

RECORDED = Path(__file__).parent / "fixtures" / "fio-3.33-randrw-and-read.json"


def test_recorded_report_parses_mixed_and_read_only_jobs():
    report = load_report(RECORDED.read_text())
    mix, read = parse_report(report)
    raw = report["jobs"]
    assert mix.name == "mix-4k-qd8" and mix.numjobs == 2 and mix.iodepth == 8 and mix.bs == 4096
    assert mix.read is not None and mix.write is not None
    assert mix.read.ios == raw[0]["read"]["total_ios"] and mix.write.ios == raw[0]["write"]["total_ios"]
    assert mix.iops == pytest.approx(raw[0]["read"]["iops"] + raw[0]["write"]["iops"])
    assert read.write is None, "a direction with no I/O must be absent, not zeros"
    lat = read.read.latency
    assert read.read.latency_kind == "lat"
    assert lat.p99 == raw[1]["read"]["lat_ns"]["percentile"]["99.000000"]
    assert lat.p50 <= lat.p99 <= lat.p99_9 <= lat.max * (1 + 1 / 64)  # fio bins: 64 per power of 2
    expected_cpu = (raw[1]["usr_cpu"] + raw[1]["sys_cpu"]) / 100 * raw[1]["job_runtime"] * 1000 / read.read.ios
    assert read.cpu_us_per_io == pytest.approx(expected_cpu)


def test_warning_lines_around_the_json_are_skipped():
    text = "fio: this platform does not support process shared mutexes\n" + RECORDED.read_text()
    assert len(parse_report(load_report(text))) == 2
    text = RECORDED.read_text() + "fio: file hash not empty on exit\n"
    assert len(parse_report(load_report(text))) == 2


def test_clat_percentiles_are_used_when_lat_percentiles_are_off():
    report = json.loads(RECORDED.read_text())
    direction = report["jobs"][1]["read"]
    direction["clat_ns"]["percentile"] = direction["lat_ns"].pop("percentile")
    (_, read) = parse_report(report)
    assert read.read.latency_kind == "clat" and read.read.latency.p99 is not None


def test_client_stats_layout_is_read_without_the_all_clients_sum():
    report = json.loads(RECORDED.read_text())
    clients = [dict(j, hostname="vm1") for j in report.pop("jobs")]
    clients.append(dict(clients[0], jobname="All clients"))
    report["client_stats"] = clients
    assert [r.name for r in parse_report(report)] == ["mix-4k-qd8", "read-64k-qd4"]


@pytest.mark.parametrize("stdout", ["", "fio: pid=0, err=22/file:filesetup.c", '{"jobs": [', '{"foo": 1}'])
def test_no_or_broken_report_is_an_operation_failure(stdout: str):
    with pytest.raises(OperationFailed):
        load_report(stdout)


def test_version_gate():
    assert parse_version("fio-3.33\n") == (3, 33)
    assert require_version("fio-3.33") == "fio-3.33"
    with pytest.raises(EnvironmentProblem, match="too old"):
        require_version("fio-2.21")
    with pytest.raises(EnvironmentProblem):
        require_version("not fio")


def test_latency_log_folds_into_buckets_with_mean_and_worst():
    lines = ["100, 1000, 0, 4096, 0", "200, 3000, 0, 4096, 0", "1100, 5000, 0, 4096, 0", "garbage", ""]
    a, b = fold_latency_log(lines, bucket_s=1.0)
    assert (a.t_s, a.mean_ns, a.max_ns) == (0.0, 2000.0, 3000.0)
    assert (b.t_s, b.mean_ns, b.max_ns) == (1.0, 5000.0, 5000.0)


def test_latency_log_is_folded_in_bounded_memory():
    """A 200k-line log (over an hour at 20 ms windows) streams through without being held."""

    def lines() -> Iterator[str]:
        for i in range(200_000):
            yield f"{i * 20}, {100_000 + i % 977}, 0, 4096, 0\n"

    tracemalloc.start()
    points = fold_latency_log(lines(), bucket_s=4000 / 300)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(points) <= 301
    assert peak < 2 * 1024 * 1024


def test_sizes():
    assert parse_size("4096") == 4096
    assert parse_size("64k") == 64 * 1024
    assert parse_size("256M") == 256 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert format_size(256 * 1024**2) == "256.0 MiB"
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(InvalidInput):
            parse_size(bad)


@pytest.mark.parametrize(
    ("rw", "expected"),
    [("randwrite", "write"), ("write", "write"), ("readwrite", "read"), ("randrw", "read"), ("randread", "read")],
)
def test_main_direction_names_the_job(rw: str, expected: str):
    (mix, _) = parse_report(load_report(RECORDED.read_text()))
    job = mix.model_copy(update={"rw": rw})
    assert job.main_direction() is getattr(job, expected)
