"""The `kvmkit plan` commands through typer's CliRunner: output shapes, options and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kvmkit.errors import InvalidInput
from kvmkit.plan.cli import app
from tests.plan.conftest import EXAMPLE

runner = CliRunner()

CONFIG_KEYS = {
    "id", "components", "months", "monthly_cost_per_node", "breakdown", "nodes_per_rack", "vms_per_node",
    "binding_resource", "cost_per_vm_month", "cost_per_vcpu_month", "cost_per_gb_ram_month", "cost_per_tb_month",
    "cost_per_kiops_month",
}  # fmt: skip


def run_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_evaluate_json_has_the_issue_keys_ranked_by_cost_per_vm():
    data = run_json("evaluate", str(EXAMPLE), "--top", "5", "--months", "36,60")
    assert data["evaluated"] == 385_200 and len(data["configurations"]) == 5
    first = data["configurations"][0]
    assert set(first) >= CONFIG_KEYS
    assert first["binding_resource"] in {"cpu", "ram", "storage", "iops"}
    assert sum(first["breakdown"].values()) == pytest.approx(first["monthly_cost_per_node"], abs=1e-4)
    per_vm = [c["cost_per_vm_month"] for c in data["configurations"]]
    assert per_vm == sorted(per_vm)


def test_evaluate_months_option_limits_lifetimes():
    data = run_json("evaluate", str(EXAMPLE), "--top", "3", "--months", "48")
    assert data["months"] == [48] and {c["months"] for c in data["configurations"]} == {48}


def test_evaluate_csv_and_table():
    result = runner.invoke(app, ["evaluate", str(EXAMPLE), "--top", "3", "--csv"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 3 and float(rows[0]["cost_per_vm_month"]) > 0
    table = runner.invoke(app, ["evaluate", str(EXAMPLE), "--top", "3"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "configurations can host the reference VM" in table.stdout


def test_fleet_json_places_the_whole_demand():
    data = run_json("fleet", str(EXAMPLE), "--months", "60")
    assert sum(sum(n["vms"].values()) for n in data["nodes"]) == 10_000
    assert data["racks"] >= 1 and set(data["utilisation"]) == {
        "cpu", "ram", "storage", "iops", "rack_space", "rack_power"}  # fmt: skip
    single = run_json("fleet", str(EXAMPLE), "--months", "60", "--single-type")
    assert len(single["nodes"]) == 1 and single["total_monthly_cost"] >= data["lower_bound"]


def test_fleet_demand_nobody_can_meet_points_at_the_demand_line(tmp_path):
    text = EXAMPLE.read_text().replace("vcpu = 16\nram_gb = 32", "vcpu = 16000\nram_gb = 32")
    path = tmp_path / "plan.toml"
    path.write_text(text)
    result = runner.invoke(app, ["fleet", str(path)])
    assert isinstance(result.exception, InvalidInput)
    line = text.splitlines().index('name = "compute"')  # 0-based index of the name = 1-based line of the header
    assert str(result.exception).startswith(f"{path}:{line}: demand[3]: no configuration can hold one VM")


def test_sensitivity_json():
    data = run_json("sensitivity", str(EXAMPLE), "--vary", "power_price=0.10:0.40", "--steps", "3")
    assert [p["value"] for p in data["parameters"][0]["points"]] == [0.1, 0.25, 0.4]


def test_bad_input_exits_with_invalid_input_and_no_traceback(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(EXAMPLE.read_text().replace("pue = 1.4", "pue = 0.4"))
    result = runner.invoke(app, ["evaluate", str(path)])
    assert isinstance(result.exception, InvalidInput) and result.exception.exit_code == 2
    assert "site.pue" in str(result.exception)
    months = runner.invoke(app, ["evaluate", str(EXAMPLE), "--months", "0"])
    assert isinstance(months.exception, InvalidInput)


def test_bench_reports_a_ratio_against_the_loop_in_the_same_process():
    data = run_json("bench", "--configs", "50000", "--loop-configs", "1000", "--repeats", "1")
    assert data["configurations"] == 50_000 and data["loop_configurations"] == 1000
    assert data["max_abs_difference"] < 1e-6  # the two paths computed the same numbers
    assert data["ratio"] == pytest.approx(data["vectorised_configs_per_s"] / data["loop_configs_per_s"], rel=0.01)
    assert data["ratio"] > 1 and data["peak_rss_mb"] > 0 and data["fleet_vms"] == 10_000


def test_fleet_json_on_a_real_stdout_is_pure_json():
    """HiGHS writes to file descriptor 1 directly; CliRunner would not see it, a real process does."""
    result = subprocess.run(
        [sys.executable, "-m", "kvmkit.plan", "fleet", str(EXAMPLE), "--months", "60", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total_nodes"] > 0


def test_module_entry_point_prints_one_line_errors(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(EXAMPLE.read_text().replace("pue = 1.4", "pue = 0.4"))
    result = subprocess.run([sys.executable, "-m", "kvmkit.plan", "evaluate", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"kvmkit: error: {path}:") and result.stderr.count("\n") == 1
