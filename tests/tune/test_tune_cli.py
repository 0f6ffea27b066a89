"""The `kvmkit tune` sub-app end to end (typer's runner): exit codes, --json, the commands' wiring."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmkit.errors import InvalidInput
from kvmkit.tune.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
DEV_VM = FIXTURES / "dev-vm-live.tar.gz"
XEON = FIXTURES / "synthetic-xeon-2s.tar.gz"

runner = CliRunner()


def test_audit_from_capture_json_and_exit_code_on_fail():
    result = runner.invoke(app, ["audit", "--goal", "latency", "--from", str(XEON), "--json"])
    assert result.exit_code == 1  # the synthetic Xeon has FAILs for latency
    report = json.loads(result.stdout)
    assert report["goal"] == "latency" and report["host"] == "synthetic-xeon-2s"
    assert report["origin"] == str(XEON)
    assert set(report["scores"]) == {"balanced", "latency", "per-core", "per-watt", "throughput"}
    governor = next(f for f in report["findings"] if f["check"] == "cpufreq_governor")
    assert governor["status"] == "FAIL" and governor["current"] == "powersave"


def test_audit_passes_with_exit_zero_for_a_goal_without_fails(tmp_path: Path):
    profile = tmp_path / "lenient.toml"
    profile.write_text(
        'description = "d"\n[checks.clocksource]\nexpect = { equals = "tsc" }\n'
        'why = "a reason long enough"\nsource = "a documented source"\n'
    )
    result = runner.invoke(app, ["audit", "--goal", str(profile), "--from", str(XEON)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "score 100/100" in result.stdout


def test_audit_table_shows_fix_kinds_literally():
    result = runner.invoke(app, ["audit", "--goal", "latency", "--from", str(XEON)], env={"COLUMNS": "250"})
    assert "How to fix" in result.stdout
    assert "runtime:    echo 1 > /sys/devices/system/cpu/cpu*/cpuidle" in result.stdout
    assert "tuned profile [cpu] force_latency=10" in result.stdout  # brackets not swallowed as rich markup


def test_unknown_goal_raises_invalid_input():
    result = runner.invoke(app, ["audit", "--goal", "fastest", "--from", str(DEV_VM)])
    assert isinstance(result.exception, InvalidInput)
    assert "valid goals: balanced, latency, per-core, per-watt, throughput" in str(result.exception)


def test_apply_and_rollback_on_a_tree(xeon_folder: Path, tmp_path: Path):
    rollback_file = tmp_path / "rb.json"
    args = ["--root", str(xeon_folder), "--rollback-file", str(rollback_file)]
    dry = runner.invoke(app, ["apply", "--goal", "throughput", "--dry-run", "--json", "--root", str(xeon_folder)])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["dry_run"] is True
    assert not rollback_file.exists()
    applied = runner.invoke(app, ["apply", "--goal", "throughput", "--json", *args])
    assert applied.exit_code == 0, applied.output
    changed = {c["check"] for c in json.loads(applied.stdout)["changes"]}
    assert changed == {"cpufreq_governor", "swappiness", "io_scheduler"}
    assert (xeon_folder / "root/sys/block/nvme1n1/queue/scheduler").read_text() == "none"
    rolled = runner.invoke(app, ["rollback", *args], env={"COLUMNS": "200"})
    assert rolled.exit_code == 0, rolled.output
    row = next(line for line in rolled.stdout.splitlines() if "swappiness" in line)
    assert [cell.strip() for cell in row.split("│")[3:5]] == ["60", "10"]  # restored, was
    assert (xeon_folder / "root/sys/block/nvme1n1/queue/scheduler").read_text() == "mq-deadline"


def test_capture_to_file_then_diff_against_fixture(tmp_path: Path):
    out = tmp_path / "here.tar.gz"
    result = runner.invoke(app, ["capture", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert tarfile.is_tarfile(out)
    same = runner.invoke(app, ["diff", str(out), "live", "--json"])
    assert same.exit_code == 0
    # only what can change while a lab runs next to the tests may differ (VMs starting or stopping)
    assert {d["check"] for d in json.loads(same.stdout)["differences"]} <= {"hugepages_coverage_pct", "irqbalance"}
    other = runner.invoke(app, ["diff", str(DEV_VM), str(XEON)])
    assert "checks differ" in other.stdout


@pytest.mark.parametrize("command", ["profiles", "checks"])
def test_listing_commands_json(command):
    result = runner.invoke(app, [command, "--json"])
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) >= 5


def test_from_and_root_together_are_rejected(xeon_folder: Path):
    result = runner.invoke(app, ["audit", "--from", str(XEON), "--root", str(xeon_folder)])
    assert isinstance(result.exception, InvalidInput)


@pytest.mark.parametrize("goal", ["balanced", "latency", "throughput", "per-core", "per-watt"])
def test_live_audit_of_this_machine_runs_for_every_goal(goal):
    result = runner.invoke(app, ["audit", "--goal", goal, "--json"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    assert report["origin"] == "live" and report["goal"] == goal
    assert result.exit_code == (1 if report["counts"]["FAIL"] else 0)
    for finding in report["findings"]:
        if finding["status"] == "UNKNOWN":
            assert finding["detail"], f"{finding['check']}: UNKNOWN without a reason"


def test_capture_of_an_unpacked_capture_keeps_its_probes(xeon_folder: Path, tmp_path: Path):
    out = tmp_path / "again.tar.gz"
    result = runner.invoke(app, ["capture", "--root", str(xeon_folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    same = runner.invoke(app, ["diff", str(out), str(XEON), "--json"])
    assert json.loads(same.stdout)["differences"] == []
