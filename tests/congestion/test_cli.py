"""The `kvmkit congestion` sub-app end to end (typer's runner), on a real QEMU-like process."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmkit.benchmarks.congestion import loadgen
from kvmkit.congestion.cli import app
from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound

runner = CliRunner()


def test_sample_json_prints_one_report_per_interval_with_the_documented_fields(tmp_path: Path):
    record = tmp_path / "history.jsonl"
    with loadgen("cli-vm", 2, 1, None, seconds=30) as proc:
        result = runner.invoke(
            app, ["sample", "--interval", "0.5", "--count", "2", "--json", "--pid", str(proc.pid),
                  "--history", str(record)],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 2
    for report in lines:
        assert datetime.fromisoformat(report["time"]).tzinfo is not None  # docs/cli.md: ISO 8601 with its zone
        assert {"pcpus", "vcpus_allocated", "oversubscription", "psi_some_avg10"} <= report["host"].keys()
        (vm,) = report["vms"]
        assert vm["vm"] == "cli-vm"
        assert {"congestion_pct", "utilisation_pct", "vcpus", "emulator"} <= vm.keys()
        assert [v["vcpu"] for v in vm["vcpus"]] == [0, 1]
        assert {"vcpu", "tid", "utilisation_pct", "congestion_pct"} <= vm["vcpus"][0].keys()
        assert vm["vcpus"][0]["utilisation_pct"] > 20  # the busy one
    assert len(record.read_text().splitlines()) == 2

    advised = runner.invoke(app, ["advise", "--history", str(record), "--slo-pct", "5", "--json"])
    assert advised.exit_code == 0, advised.output
    assert json.loads(advised.output)["intervals"] == 2

    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[classes.all]\npriority = 1\nslo_congestion_pct = 99\ndomains = ["*"]\n')
    judged = runner.invoke(app, ["policy", str(policy_file), "--history", str(record), "--json"])
    assert judged.exit_code == 0, judged.output
    (row,) = json.loads(judged.output)["standings"]
    assert row["vm"] == "cli-vm" and row["vm_class"] == "all" and not row["violated"]


def test_sample_table_for_people_names_the_vm():
    with loadgen("table-vm", 1, 0, None, seconds=30) as proc:
        result = runner.invoke(app, ["sample", "--interval", "0.3", "--pid", str(proc.pid)])
    assert result.exit_code == 0 and "table-vm" in result.output


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (["sample", "--interval", "0"], InvalidInput, "interval must be > 0"),
        (["sample", "--count", "0"], InvalidInput, "count must be"),
        (["sample", "--pid", "999999999"], InvalidInput, "no such process"),
        (["serve", "--port", "70000"], InvalidInput, "not a TCP port"),
        (["advise", "--history", "/nonexistent"], InvalidInput, "--slo-pct or --policy"),
        (["advise", "--history", "/nonexistent", "--slo-pct", "5"], NotFound, "does not exist"),
        (["bench", "--seconds", "0"], InvalidInput, "--seconds"),
        (["revert", "--uri", "qemu:///system?socket=/nonexistent/sock", "--journal", "/tmp/x"],
         EnvironmentProblem, "cannot connect to libvirt"),
    ],
)  # fmt: skip
def test_bad_input_raises_the_one_line_kvmkit_error(args: list[str], error: type, message: str):
    result = runner.invoke(app, args)
    assert isinstance(result.exception, error), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)


def test_top_refreshes_and_stops_after_count():
    with loadgen("top-vm", 2, 1, None, seconds=30) as proc:
        result = runner.invoke(app, ["top", "--interval", "0.3", "--count", "2", "--pid", str(proc.pid)])
    assert result.exit_code == 0, result.output
    assert "top-vm" in result.output and "congestion" in result.output


def test_bench_json_reports_every_case_the_sampling_cost_its_time_and_its_peak_rss():
    result = runner.invoke(app, ["bench", "--seconds", "0.5", "--cost-samples", "1", "--cost-threads", "50",
                                 "--json"])
    assert result.exit_code == 0, result.output
    bench = json.loads(result.output)
    assert [c["busy_threads"] for c in bench["accuracy"][:4]] == [1, 2, 3, 4]
    assert bench["cost"]["threads"] >= 50 and bench["cost"]["cpu_ms_per_sample"] > 0
    assert bench["seconds"] >= 4 * 0.5  # four one-core cases of 0.5 s at the least
    assert 10 < bench["peak_rss_mib"] < 1024
