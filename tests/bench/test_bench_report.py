"""`bench compare`: the table, and the self-contained HTML report rendered by real headless Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmkit.bench import compare
from kvmkit.bench.cli import app
from kvmkit.bench.schema import BenchRun, load_run
from kvmkit.errors import InvalidInput, NotFound

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@dataclass
class Rendered:
    dom: str
    console: list[str]  # every page console message / uncaught exception Chromium logged
    png: bytes


def render(page: Path, tmp: Path) -> Rendered:
    """Load the page in headless Chromium, let scripts run, and keep the DOM, console log and a screenshot."""
    shot = tmp / f"{page.stem}.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
            "--virtual-time-budget=15000",
            f"--user-data-dir={tmp / 'profile'}",
            f"--screenshot={shot}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [ln for ln in done.stderr.splitlines() if ":CONSOLE" in ln]
    return Rendered(done.stdout, console, shot.read_bytes())


def ink_fraction(png: bytes) -> float:
    """Share of filtered pixel bytes that are neither 0 nor 255: ~0 for a blank (uniform) page, whatever
    PNG filter Chromium chose per row, since a uniform row filters to zeros (or stays all-255 unfiltered)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return sum(1 for b in raw[::7] if b not in (0, 255)) / len(raw[::7])


@pytest.fixture(scope="module")
def result_files(quick_run: BenchRun, sweep_run: BenchRun, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("results")
    paths = []
    for run in (quick_run, sweep_run):
        path = folder / f"{run.label}.json"
        path.write_text(run.to_json())
        paths.append(path)
    return paths


def test_rows_line_up_jobs_by_name_and_give_the_change(quick_run: BenchRun):
    rows = compare.rows([quick_run, quick_run])
    assert [r.job for r in rows] == [j.name for j in quick_run.measured()]
    assert all(r.iops_change_pct(1) == pytest.approx(0.0) for r in rows)


def test_curves_come_from_jobs_at_several_queue_depths(sweep_run: BenchRun, quick_run: BenchRun):
    curves = {(c.rw, c.bs): c for c in compare.curves(sweep_run)}
    assert set(curves) == {("randread", 4096), ("randwrite", 4096)}
    read = curves[("randread", 4096)]
    assert read.qds == [1, 16]
    assert read.iops[1] > read.iops[0], "more parallelism, more IOPS on any real storage"
    assert {c.qds[0] for c in compare.curves(quick_run)} == {1}


def test_cli_compare_prints_a_table_and_json(result_files: list[Path]):
    runner = CliRunner()
    table = runner.invoke(app, ["compare", *map(str, result_files)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "randread-4k-qd1" in table.output and "Δ IOPS" in table.output
    data = runner.invoke(app, ["compare", *map(str, result_files), "--json"])
    import json

    parsed = json.loads(data.stdout)
    assert parsed["runs"] == ["quick-a", "sweep-b"]
    row = next(r for r in parsed["rows"] if r["job"] == "randread-4k-qd1")
    assert all(c["iops"] > 0 and c["p99_us"] > 0 for c in row["cells"])


def test_compare_refuses_foreign_or_missing_files(tmp_path: Path):
    foreign = tmp_path / "other.json"
    foreign.write_text('{"schema": "something/9"}')
    with pytest.raises(InvalidInput, match="schema"):
        load_run(foreign)
    with pytest.raises(NotFound):
        load_run(tmp_path / "missing.json")
    result = CliRunner().invoke(app, ["compare", str(foreign), "--html", str(tmp_path / "r.html")])
    assert isinstance(result.exception, InvalidInput)
    assert not (tmp_path / "r.html").exists()


@needs_chromium
def test_html_report_renders_in_headless_chromium_without_console_errors(result_files: list[Path], tmp_path: Path):
    report = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["compare", *map(str, result_files), "--html", str(report)])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert "cdn" not in text.lower() or "<script src=" not in text, "self-contained: no external scripts"
    assert not re.search(r"<script[^>]+src=", text)
    page = render(report, tmp_path)
    assert page.console == [], page.console
    # Table, 2 QD curves, percentiles, latency over time, CPU per I/O: each a plotly SVG in the live DOM.
    assert page.dom.count('class="main-svg"') >= 6
    assert "Queue depth vs p99 latency" in page.dom and "quick-a" in page.dom
    assert ink_fraction(page.png) > 0.01


@needs_chromium
def test_the_rendering_check_catches_script_errors_and_blank_pages(tmp_path: Path):
    """Negative controls: the checks above must be able to fail."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>Plotly.newPlot('x', []);</script></body></html>")
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    bad = render(broken, tmp_path)
    assert any("Plotly is not defined" in line for line in bad.console)
    assert 'class="main-svg"' not in bad.dom
    assert ink_fraction(render(blank, tmp_path).png) < 0.001


def test_notes_warn_about_other_machines_tcg_guests_and_failed_runs(quick_run: BenchRun):
    guest = quick_run.model_copy(
        update={"label": "in-guest", "machine": quick_run.machine.model_copy(update={"runner": "vm:lab1"})}
    )
    other = quick_run.model_copy(
        update={
            "label": "elsewhere",
            "status": "failed",
            "error": "VM gone",
            "machine": quick_run.machine.model_copy(update={"hostname": "other"}),
        }
    )
    assert compare.machine_notes([quick_run, quick_run]) == []
    notes = " | ".join(compare.machine_notes([quick_run, guest, other]))
    assert "2 machines" in notes and "TCG" in notes and "elsewhere: run failed (VM gone)" in notes
