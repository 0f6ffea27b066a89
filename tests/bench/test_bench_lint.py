"""`kvmkit bench lint` on good and bad job files, on kvmkit's own generated suites, and through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmkit.bench.cli import app
from kvmkit.bench.lint import lint_file, lint_text
from kvmkit.bench.schema import DirectionResult, JobResult, Percentiles
from kvmkit.bench.suites import SUITES, Purge, SuiteContext
from kvmkit.errors import InvalidInput, NotFound

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parents[2] / "examples" / "fio"
GIB = 1024**3
JOB_FILES = sorted(FIXTURES.rglob("*.fio"))


def _expected(path: Path) -> set[str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("; expect:"), f"{path} must start with '; expect: CODES' or '; expect: none'"
    codes = first.split(":", 1)[1].split()
    return set() if codes == ["none"] else set(codes)


def test_fixture_set_has_good_and_bad_files():
    assert any("good" in p.parts for p in JOB_FILES) and sum("bad" in p.parts for p in JOB_FILES) >= 8


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_linter_finds_exactly_the_expected_mistakes(path: Path):
    found = {f.code for f in lint_file(path, ram_bytes=GIB)}
    assert found == _expected(path)
    if "good" in path.parts:
        assert not found


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed")
@pytest.mark.parametrize("path", [*JOB_FILES, *sorted(EXAMPLES.glob("*.fio"))], ids=lambda p: p.name)
def test_job_files_are_valid_fio(path: Path):
    """The fixtures are real fio job files, so findings are about real jobs (fio --parse-only)."""
    done = subprocess.run(["fio", "--parse-only", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_finding_points_at_the_offending_line():
    text = "[a]\nfilename=/x\nsize=100g\ndirect=1\nioengine=psync\niodepth=16\nrw=randread\n"
    (finding,) = lint_text(text, ram_bytes=GIB)
    assert finding.code == "KB103" and finding.line == 6 and finding.job == "a"


def test_global_section_applies_to_later_jobs_only():
    text = "[early]\nfilename=/x\nsize=100g\nrw=read\n[global]\ndirect=1\n[late]\nfilename=/x\nsize=100g\nrw=read\n"
    by_job = {(f.job, f.code) for f in lint_text(text, ram_bytes=GIB)}
    assert ("early", "KB101") in by_job and ("late", "KB101") not in by_job


def _fake_result(name: str, phase: str, iops: float) -> JobResult:
    lat = Percentiles(mean=100.0, p50=90.0, p99=200.0, max=500.0)
    direction = DirectionResult(iops=iops, bw_bytes=iops * 4096, ios=int(iops), latency=lat)
    return JobResult(
        name=name,
        phase=phase,
        rw="randrw",
        bs=4096,
        iodepth=32,
        runtime_s=1.0,
        read=direction,
        write=direction,
        usr_cpu_pct=1.0,
        sys_cpu_pct=1.0,
    )


def _all_steps(suite: str, ctx: SuiteContext) -> list[str]:
    """Drive a suite with made-up results (the suites are pure) and collect every job file it would run."""
    program = SUITES[suite](ctx)
    texts, step = [], next(program)
    try:
        while True:
            if isinstance(step, Purge):
                step = program.send([])
                continue
            texts.append(step.ini())
            step = program.send([_fake_result(j.name, j.phase, 1000.0) for j in step.jobs])
    except StopIteration:
        return texts


@pytest.mark.parametrize("suite", list(SUITES))
def test_kvmkit_generated_jobs_lint_clean(suite: str):
    ctx = SuiteContext("/srv/bench/kvmkit.dat", "file", 64 * GIB, max_rounds=5)
    texts = _all_steps(suite, ctx)
    assert texts
    for text in texts:
        assert lint_text(text, ram_bytes=GIB) == [], text


def test_generated_device_jobs_fill_before_reading():
    ctx = SuiteContext("/dev/vdb", "block", 64 * GIB)
    first = _all_steps("quick", ctx)[0]
    assert lint_text(first, ram_bytes=GIB) == []
    assert first.index("[fill]") < first.index("rw=randread")


def test_examples_lint_as_their_comments_say():
    assert lint_file(EXAMPLES / "device-4k-randread.fio", ram_bytes=GIB) == []
    naive = {f.code for f in lint_file(EXAMPLES / "naive-randread.fio", ram_bytes=GIB)}
    assert {"KB101", "KB103", "KB107", "KB109", "KB112"} <= naive


def test_missing_and_empty_job_files_are_clear_errors(tmp_path: Path):
    with pytest.raises(NotFound):
        lint_file(tmp_path / "nope.fio", ram_bytes=GIB)
    (tmp_path / "empty.fio").write_text("[global]\ndirect=1\n")
    with pytest.raises(InvalidInput):
        lint_file(tmp_path / "empty.fio", ram_bytes=GIB)


def test_cli_lint_exit_codes_follow_severity():
    runner = CliRunner()
    bad = runner.invoke(app, ["lint", str(FIXTURES / "bad" / "psync-with-iodepth.fio")])
    assert bad.exit_code == 1 and "KB103 error" in bad.output
    good = runner.invoke(app, ["lint", str(FIXTURES / "good" / "file-randrw-libaio.fio")])
    assert good.exit_code == 0, good.output
    assert "0 error(s)" in good.output
    as_json = runner.invoke(app, ["lint", "--json", str(FIXTURES / "bad" / "zero-buffers.fio")])
    assert as_json.exit_code == 1
    assert [f["code"] for f in json.loads(as_json.stdout)] == ["KB104"]


def test_percentiles_count_as_on_when_either_kind_is_on():
    base = "[a]\nfilename=/x\nsize=100g\ndirect=1\nioengine=io_uring\nrw=randread\n"
    assert lint_text(base + "lat_percentiles=0\n", ram_bytes=GIB) == []
    assert lint_text(base + "clat_percentiles=0\nlat_percentiles=1\n", ram_bytes=GIB) == []
    assert [f.code for f in lint_text(base + "clat_percentiles=0\n", ram_bytes=GIB)] == ["KB110"]
