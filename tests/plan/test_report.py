"""The HTML report is self-contained, reads as a buyer needs it (currency on every figure, summary and
recommendation first, lifetimes side by side, capex/opex, assumptions, human labels) and renders in headless
Chromium: charts drawn, no console errors, a screenshot that is not blank."""

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
LIFETIMES = (36, 60)  # the example's lifetimes_months
CHARTS = tuple(f"chart-{kind}-{months}" for months in LIFETIMES
               for kind in ("breakdown", "resources", "fleet", "tornado"))


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
    result = CliRunner().invoke(app, ["report", str(EXAMPLE), "--html", str(out), "--top", "8", "--currency", "CHF"])
    assert result.exit_code == 0, result.output
    return out


def test_report_is_self_contained(report):
    text = report.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inlined, nothing fetched
    assert text.count("Plotly.newPlot") == len(CHARTS)
    for months in LIFETIMES:
        ranking = re.search(rf'<table id="ranking-{months}">(.*?)</table>', text, re.S)
        assert ranking and ranking.group(1).count("<tr>") == 1 + 8


def _text(page: str) -> str:
    """The page without plotly.js (whose own source mentions every word)."""
    return re.sub(r"<script.*?</script>", "", page, flags=re.S)


def test_report_opens_with_a_recommendation_and_lifetimes_side_by_side(report):
    page = _text(report.read_text())
    assert page.index('id="recommendation"') < page.index('id="summary"') < page.index('id="assumptions"') \
        < page.index('id="ranking-36"')
    recommendation = re.search(r'id="recommendation">(.*?)</p>', page, re.S).group(1)
    assert "Over 36 months" in recommendation and "Over 60 months" in recommendation
    assert "CHF per VM-month" in recommendation and "bound by" in recommendation
    summary = re.search(r'<table id="summary">(.*?)</table>', page, re.S).group(1)
    assert "36-month lifetime" in summary and "60-month lifetime" in summary
    for row in ("capex", "opex per month", "lifetime total", "Fleet: lifetime total"):
        assert row in summary
    assert "EUR" not in page  # one currency, the one asked for


def test_every_figure_names_its_currency_and_lifetime(report):
    page = report.read_text()
    titles = re.findall(r'"title":\{"text":"([^"]*)"', page)
    assert len(titles) >= len(CHARTS)
    main = [t for t in titles if t.startswith(("Cost breakdown", "Cost per delivered", "Fleet", "Sensitivity"))]
    assert len(main) == len(CHARTS)
    for title in main:
        assert re.search(r"\b(36|60)-month lifetime", title), title
        assert "CHF" in title, title


def test_assumptions_are_listed_with_values(report, example_plan):
    page = _text(report.read_text())
    table = re.search(r'<table id="assumptions">(.*?)</table>', page, re.S).group(1)
    assert f"{example_plan.site.electricity_price_per_kwh:,.2f} CHF" in table
    assert "Electricity price per kWh" in table and "vCPUs sold per hardware thread" in table
    assert "Reference VM" in table and "Demand (fleet)" in table


def test_sensitivity_uses_human_labels(report):
    page = report.read_text()
    tornado = page[page.index('id="chart-tornado-36"'):]
    assert "Electricity price per kWh" in tornado[:20000] and "power_price" not in tornado[:20000]


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
    assert "CHF per VM-month" in dom.stdout and "Electricity price per kWh" in dom.stdout  # as drawn

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
    fig = breakdown_figure(summary, 60, "EUR")
    for column, config in enumerate(summary.configurations):
        stacked = sum(trace.y[column] for trace in fig.data)
        assert stacked == pytest.approx(config.cost_per_vm_month, rel=1e-5)
    result = sensitivity(example_plan, [Vary("power_price", 0.1, 0.4)], 60, steps=2)
    tornado = tornado_figure(result, "EUR")
    low, high = (trace.x[0] + trace.base for trace in tornado.data)
    assert (low, high) == pytest.approx((result.parameters[0].cost_at_low, result.parameters[0].cost_at_high))
