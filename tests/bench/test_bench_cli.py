"""`kvmkit bench run` end to end through the typer app: JSON out, table with time and peak RSS, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmkit.bench.cli import app
from kvmkit.bench.lint import lint_text
from kvmkit.bench.schema import SCHEMA, load_run
from kvmkit.errors import Conflict, InvalidInput, OperationFailed

SHORT = ["--size", "64M", "--runtime", "1", "--ramp", "0"]


def test_run_json_prints_and_saves_the_versioned_result(disk_dir: Path):
    out = disk_dir / "result.json"
    target = disk_dir / "t.dat"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--suite",
            "sweep",
            "--target",
            str(target),
            *SHORT,
            "--qd",
            "8",
            "--json",
            "--out",
            str(out),
            "--label",
            "cli",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["schema"] == SCHEMA and printed["label"] == "cli"
    saved = load_run(out)
    assert [(j.rw, j.iodepth) for j in saved.measured()] == [("randread", 8), ("randwrite", 8)]
    assert "2 × RAM" in result.stderr, "the small working set is warned about loudly"
    assert not target.exists()


def test_run_table_shows_tails_time_and_peak_rss(disk_dir: Path):
    result = CliRunner().invoke(
        app, ["run", "-s", "sweep", "-t", str(disk_dir / "t.dat"), *SHORT, "--qd", "4"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "p99.9 µs" in result.stdout and "CPU µs/IO" in result.stdout
    assert "peak RSS kvmkit" in result.stdout and "time " in result.stdout


def test_bad_input_raises_one_line_errors_and_writes_nothing(disk_dir: Path):
    precious = disk_dir / "precious.img"
    precious.write_bytes(b"x" * 4096)
    out = disk_dir / "result.json"
    runner = CliRunner()
    cases = [
        (["-s", "quick", "-t", str(precious), "--out", str(out)], Conflict),
        (["-s", "quick", "-t", str(precious), "--destructive", str(disk_dir / "other")], InvalidInput),
        (["-s", "quick", "-t", str(disk_dir / "t.dat"), "--size", "huge"], InvalidInput),
        (["-s", "quick", "-t", str(disk_dir / "t.dat"), "--out", str(disk_dir / "no" / "r.json")], InvalidInput),
        (["-s", "sweep", "-t", str(disk_dir / "t.dat"), "--qd", "1,x"], InvalidInput),
    ]
    for args, error in cases:
        result = runner.invoke(app, ["run", *args])
        assert isinstance(result.exception, error), (args, result.exception)
        assert "\n" not in str(result.exception)
    assert sorted(p.name for p in disk_dir.iterdir()) == ["precious.img"]
    assert precious.read_bytes() == b"x" * 4096


def test_suites_lists_all_four():
    result = CliRunner().invoke(app, ["suites"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["quick", "sweep", "latency-under-load", "snia"]


@pytest.mark.parametrize("suite", ["quick", "sweep", "latency-under-load", "snia"])
def test_jobs_prints_a_job_file_fio_accepts_and_the_linter_passes(suite: str, tmp_path: Path):
    result = CliRunner().invoke(app, ["jobs", "-s", suite, "-t", "/dev/vdb", "--size", "256G"])
    assert result.exit_code == 0, result.output
    job_file = tmp_path / f"{suite}.fio"
    job_file.write_text(result.stdout)
    assert lint_text(result.stdout, ram_bytes=1024**3) == []
    parsed = subprocess.run(["fio", "--parse-only", str(job_file)], capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr


def test_fio_failure_is_a_failed_run_saved_with_its_error(disk_dir: Path):
    out = disk_dir / "failed.json"
    target = disk_dir / "t.dat"
    args = ["run", "-s", "sweep", "-t", str(target), *SHORT, "--qd", "1", "--ioengine", "nosuchengine", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, OperationFailed)
    assert "failed" in str(result.exception) and str(out) in str(result.exception)
    saved = load_run(out)
    assert saved.status == "failed" and "fio failed" in saved.error and saved.jobs == []
    assert not target.exists(), "the file kvmkit created is removed on failure too"
