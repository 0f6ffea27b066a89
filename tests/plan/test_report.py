"""The HTML report is self-contained and renders in headless Chromium: charts drawn, no console errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from kvmkit.plan.cli import app
from kvmkit.plan.records import summarise
from kvmkit.plan.report import breakdown_figure, tornado_figure
from kvmkit.plan.sensitivity import Vary, sensitivity
from kvmkit.plan.space import enumerate_space
from kvmkit.plan.vectorised import evaluate_space
from tests.plan.conftest import EXAMPLE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHARTS = ("chart-breakdown", "chart-resources", "chart-fleet", "chart-tornado")


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with no network features; --virtual-time-budget lets plotly finish drawing."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "plan.html"
    result = CliRunner().invoke(app, ["report", str(EXAMPLE), "--html", str(out), "--top", "8"])
    assert result.exit_code == 0, result.output
    return out


def test_report_is_self_contained(report):
    text = report.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inlined, nothing fetched
    assert text.count("Plotly.newPlot") == len(CHARTS)
    assert 'id="ranking"' in text and text.count("<tr>") == 1 + 8


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_report_renders_in_headless_chromium(report, tmp_path):
    dom = chromium(report, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    for chart in CHARTS:  # plotly replaced each empty div with its SVG
        match = re.search(rf'<div id="{chart}"(.*?)</svg>', dom.stdout, re.S)
        assert match and 'class="main-svg"' in match.group(1), chart
    assert dom.stdout.count('class="point"') > 50  # bars were drawn, not only axes

    png = tmp_path / "shot.png"
    shot = chromium(report, tmp_path / "profile-shot", "--window-size=1280,2800", f"--screenshot={png}")
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    assert console_errors(shot.stderr) == []
    colours = Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # a blank page has one colour; charts have hundreds


def test_console_error_detection_can_fail(tmp_path):
    """The check above is only worth something if a broken page is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    result = chromium(page, tmp_path / "profile", "--dump-dom")
    assert console_errors(result.stderr)


def test_breakdown_chart_stacks_to_the_cost_per_vm(example_plan):
    summary = summarise(example_plan, evaluate_space(example_plan, enumerate_space(example_plan, [60])), 4)
    fig = breakdown_figure(summary)
    for column, config in enumerate(summary.configurations):
        stacked = sum(trace.y[column] for trace in fig.data)
        assert stacked == pytest.approx(config.cost_per_vm_month, rel=1e-5)
    result = sensitivity(example_plan, [Vary("power_price", 0.1, 0.4)], 60, steps=2)
    tornado = tornado_figure(result)
    low, high = (trace.x[0] + trace.base for trace in tornado.data)
    assert (low, high) == pytest.approx((result.parameters[0].cost_at_low, result.parameters[0].cost_at_high))
