"""`kvmkit plan`: thin commands over the plan library; --json prints the same records the functions return."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from kvmkit.benchmarks.plan import run_bench
from kvmkit.cliinput import existing_file
from kvmkit.errors import InvalidInput
from kvmkit.output import console, err_console, print_json, print_table
from kvmkit.plan import buyer, render
from kvmkit.plan.fleet import DEFAULT_CANDIDATES, FleetPlan, plan_fleet
from kvmkit.plan.inputs import PlanInput
from kvmkit.plan.loader import KeyLines, load_plan_with_lines, locate
from kvmkit.plan.problems import PlanProblem
from kvmkit.plan.records import summarise
from kvmkit.plan.report import render_html
from kvmkit.plan.sensitivity import Vary, parse_vary, sensitivity
from kvmkit.plan.space import enumerate_space
from kvmkit.plan.vectorised import Evaluation, evaluate_space

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Hardware selection by total cost per delivered resource; fleet sizing; HTML report.",
)

FILE = typer.Argument(..., help="Plan input (TOML or YAML); see examples/plan/example.toml.",
                      callback=lambda path: existing_file(path, "plan file"))
MONTHS = typer.Option(None, "--months", help="Lifetimes in months, comma-separated (default: the file's).")
JSON = typer.Option(False, "--json", help="Print JSON for scripts.")


@contextmanager
def _located(path: Path, keys: KeyLines) -> Iterator[None]:
    """Problems the core finds (a demand nothing can meet) get the file and line, like loader errors."""
    try:
        yield
    except PlanProblem as exc:
        raise locate(path, keys, exc.loc, exc.message) from None


def _months(text: str | None, plan: PlanInput) -> list[int]:
    if text is None:
        return list(plan.site.lifetimes_months)
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput(f"--months {text!r}: expected whole months, comma-separated, e.g. 36,60") from None
    if not values or any(v <= 0 for v in values):
        raise InvalidInput(f"--months {text!r}: every lifetime must be > 0 months")
    return values


def _evaluate(plan: PlanInput, months: list[int]) -> Evaluation:
    return evaluate_space(plan, enumerate_space(plan, months))


def _fleet(plan: PlanInput, months: int, single_type: bool, candidates: int, gap: float, time_limit: float,
           exact: bool) -> FleetPlan:  # fmt: skip
    if candidates < 1 or not 0 <= gap < 1 or time_limit <= 0:
        raise InvalidInput("--candidates must be >= 1, --gap in [0, 1), --time-limit > 0")
    return plan_fleet(plan, _evaluate(plan, [months]), months, single_type, candidates, gap, time_limit, exact)


@app.command()
def evaluate(
    file: Path = FILE,
    months: str | None = MONTHS,
    top: int = typer.Option(20, "--top", min=0, help="How many configurations to list (0: all feasible)."),
    as_json: bool = JSON,
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
) -> None:
    """Rank every configuration that fits by cost per reference VM-month, with the binding resource."""
    plan, _ = load_plan_with_lines(file)
    summary = summarise(plan, _evaluate(plan, _months(months, plan)), top or None)
    if as_json:
        print_json(summary)
    elif as_csv:
        sys.stdout.write(render.evaluation_csv(summary))
    elif not summary.configurations:  # a sentence, not an empty table
        console.print(f"none of the {summary.evaluated:,} configurations can host the reference VM "
                      f"({', '.join(f'{k} {v}' for k, v in summary.reference_vm.items())})", soft_wrap=True)
    else:
        render.evaluation_table(summary)


@app.command()
def fleet(
    file: Path = FILE,
    months: int | None = typer.Option(None, "--months", help="Lifetime in months (default: the file's first)."),
    single_type: bool = typer.Option(False, "--single-type", help="One configuration for the whole fleet."),
    candidates: int = typer.Option(
        DEFAULT_CANDIDATES, "--candidates", help="Cheapest configurations per VM shape to consider."
    ),
    gap: float = typer.Option(0.01, "--gap", help="Stop when within this relative gap of the optimum."),
    time_limit: float = typer.Option(10.0, "--time-limit", help="Seconds for the MILP solver."),
    exact_placement: bool = typer.Option(False, "--exact-placement", help="Integer VM placement in one MILP."),
    as_json: bool = JSON,
) -> None:
    """The cheapest nodes and racks for the file's [\\[demand]], by mixed-integer programming (HiGHS)."""
    plan, keys = load_plan_with_lines(file)
    lifetime = _months(str(months) if months is not None else None, plan)[0]
    with _located(file, keys):
        result = _fleet(plan, lifetime, single_type, candidates, gap, time_limit, exact_placement)
    if as_json:
        print_json(result)
    else:
        render.fleet_table(result)


@app.command("sensitivity")
def sensitivity_command(
    file: Path = FILE,
    vary: list[str] = typer.Option(..., "--vary", help="NAME=LOW:HIGH, repeatable, e.g. power_price=0.10:0.40."),
    steps: int = typer.Option(5, "--steps", help="Values per parameter, ends included."),
    months: int | None = typer.Option(None, "--months", help="Lifetime in months (default: the file's first)."),
    as_json: bool = JSON,
) -> None:
    """How the best configuration and its cost per VM move as each parameter moves."""
    plan, _ = load_plan_with_lines(file)
    varies = [parse_vary(v) for v in vary]
    lifetime = _months(str(months) if months is not None else None, plan)[0]
    result = sensitivity(plan, varies, lifetime, steps)
    if as_json:
        print_json(result)
    else:
        render.sensitivity_table(result)


def default_varies(plan: PlanInput) -> list[Vary]:
    """Without --vary the report sweeps the two inputs the talk argues matter most: power and CPU ratio."""
    price = plan.site.electricity_price_per_kwh
    return [Vary("power_price", price / 2, price * 2), Vary("cpu_ratio", 1.0, 8.0),
            Vary("utilisation", 0.2, 0.8)]  # fmt: skip


@app.command()
def report(
    file: Path = FILE,
    html: Path = typer.Option(..., "--html", help="Where to write the self-contained HTML page."),
    top: int = typer.Option(15, "--top", min=1, help="Configurations in the table and charts."),
    vary: list[str] = typer.Option(None, "--vary", help="NAME=LOW:HIGH for the tornado (default: a few)."),
    months: str | None = typer.Option(None, "--months", help="Lifetimes to show, e.g. 36,60 (default: the "
                                                             "file's lifetimes_months)."),
    currency: str = typer.Option("EUR", "--currency", help="The currency the input's prices are in; printed "
                                                           "on every figure."),
) -> None:
    """One HTML page a buyer decides on: summary and recommendation, lifetimes side by side with capex/opex and
    totals, the assumptions, rankings, cost breakdown, cost per resource, fleet and sensitivity per lifetime."""
    if not re.fullmatch(r"[A-Za-z$€£¥₹₽¤]{1,8}", currency or ""):
        raise InvalidInput(f"--currency {currency!r}: 1-8 letters or a currency sign, e.g. EUR, USD, €")
    plan, keys = load_plan_with_lines(file)
    lifetimes = _months(months, plan)
    varies = [parse_vary(v) for v in vary] if vary else default_varies(plan)
    views = []
    for lifetime in lifetimes:
        summary = summarise(plan, _evaluate(plan, [lifetime]), top)
        with _located(file, keys):
            fleet_plan = _fleet(plan, lifetime, False, DEFAULT_CANDIDATES, 0.01, 10.0, False) if plan.demand else None
        views.append(buyer.LifetimeView(
            months=lifetime, summary=summary, fleet=fleet_plan,
            fleet_totals=buyer.fleet_totals(plan, fleet_plan) if fleet_plan else None,
            sensitivity=sensitivity(plan, varies, lifetime, 5)))  # fmt: skip
    page = render_html(views, buyer.assumptions(plan, currency), str(file), currency,
                       evaluated=sum(v.summary.evaluated for v in views),
                       feasible=sum(v.summary.feasible for v in views))  # fmt: skip
    try:
        html.write_text(page)
    except OSError as exc:
        raise InvalidInput(f"{html}: cannot write the report: {exc.strerror}") from None
    err_console.print(f"wrote {html} ({html.stat().st_size / 1e6:.1f} MB)")


@app.command()
def bench(
    configurations: int = typer.Option(1_000_000, "--configs", min=1, help="Configurations to evaluate."),
    loop_configurations: int = typer.Option(20_000, "--loop-configs", min=1, help="Configurations for the loop."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Vectorised runs; the median is reported."),
    as_json: bool = JSON,
) -> None:
    """Vectorised evaluation vs a per-config Python loop in this process; MILP time; peak RSS."""
    result = run_bench(configurations, loop_configurations, repeats)
    if as_json:
        print_json(result)
    else:
        print_table("kvmkit plan bench", ("measure", "value"), list(result.model_dump().items()))
