"""One self-contained HTML page a buyer can decide on: summary and recommendation first, then every lifetime side
by side (each figure names its lifetime and its currency), capex/opex and lifetime totals, the assumptions, and
the charts (breakdown, cost per resource, fleet, sensitivity) per lifetime.

plotly.js is inlined once (about 4.6 MB) so the page opens with no network: on a laptop on a plane, or
attached to a purchase request. `render_html` returns the text; writing it is the CLI's job.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvmkit.plan.buyer import COST_LABELS, PARAMETER_LABELS, LifetimeView, binds, money, recommendation
from kvmkit.plan.costmodel import BREAKDOWN_KEYS
from kvmkit.plan.fleet import FleetPlan
from kvmkit.plan.records import EvaluationSummary
from kvmkit.plan.sensitivity import Sensitivity

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.id, th.row { text-align: left; } td.id { font-family: monospace; }
.note { color: #666; font-size: 0.9em; } .recommendation { font-size: 1.1em; background: #eef6ee; padding: 1em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
"""


def _label(rank: int) -> str:
    return f"#{rank}"


def _cells(values: list[str], first_is_id: bool = False) -> str:
    return "".join(f'<td class="id">{html.escape(v)}</td>' if (i == 1 and first_is_id) else
                   f"<td>{html.escape(v)}</td>" for i, v in enumerate(values))  # fmt: skip


def _table(summary: EvaluationSummary, months: int, currency: str) -> str:
    head = ("#", "configuration", f"per VM-month ({currency})", "VMs/node", "binds", "nodes/rack",
            f"node/month ({currency})", f"vCPU/month ({currency})", f"GB/month ({currency})",
            f"TB/month ({currency})", f"kIOPS/month ({currency})")  # fmt: skip
    fmt = "{:,.2f}".format
    rows = []
    for c in summary.configurations:
        short_binds = f"{c.binding_resource} · {c.rack_binding.replace('_', ' ')}"
        cells = [str(c.rank), c.id.rsplit("/", 1)[0], *(fmt(v) if v is not None else "—" for v in (
            c.cost_per_vm_month,)), str(c.vms_per_node), short_binds, str(c.nodes_per_rack),
            *(fmt(v) if v is not None else "—" for v in (c.monthly_cost_per_node, c.cost_per_vcpu_month,
                                                         c.cost_per_gb_ram_month, c.cost_per_tb_month,
                                                         c.cost_per_kiops_month))]  # fmt: skip
        rows.append(f"<tr>{_cells(cells, first_is_id=True)}</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (f'<table id="ranking-{months}"><caption>Ranking, {months}-month lifetime, costs in {currency}'
            f"</caption><tr>{header}</tr>{''.join(rows)}</table>")


def summary_table(views: list[LifetimeView], currency: str) -> str:
    """Rows of decision figures, one column per lifetime."""
    def row(label: str, values: list[str]) -> str:
        return f'<tr><th class="row">{html.escape(label)}</th>{_cells(values)}</tr>'

    def m(value: float | None) -> str:
        return money(value, currency)

    head = "".join(f"<th>{v.months}-month lifetime</th>" for v in views)
    rows = [
        row("Best configuration", [v.best.id.rsplit("/", 1)[0] if v.best else "none" for v in views]),
        row("What binds it", [binds(v.best) if v.best else "—" for v in views]),
        row("VMs per node", [str(v.best.vms_per_node) if v.best else "—" for v in views]),
        row("Cost per VM-month", [m(v.best.cost_per_vm_month if v.best else None) for v in views]),
        row("Per VM: capex (one-off share)", [m(v.vm_split.capex if v.vm_split else None) for v in views]),
        row("Per VM: opex per month", [m(v.vm_split.opex_per_month if v.vm_split else None) for v in views]),
        row("Per VM: lifetime total", [m(v.vm_split.lifetime_total if v.vm_split else None) for v in views]),
        row("Per node: capex (one-off)", [m(v.node_split.capex if v.node_split else None) for v in views]),
        row("Per node: opex per month", [m(v.node_split.opex_per_month if v.node_split else None) for v in views]),
        row("Per node: lifetime total", [m(v.node_split.lifetime_total if v.node_split else None) for v in views]),
    ]
    if any(v.fleet_totals for v in views):
        ft = [v.fleet_totals for v in views]
        rows += [
            row("Fleet: nodes / racks / VMs", [f"{f.nodes} / {f.racks} / {f.vms:,}" if f else "—" for f in ft]),
            row("Fleet: per month", [m(f.per_month) if f else "—" for f in ft]),
            row("Fleet: capex (one-off)", [m(f.split.capex) if f and f.split else "—" for f in ft]),
            row("Fleet: opex per month", [m(f.split.opex_per_month) if f and f.split else "—" for f in ft]),
            row("Fleet: lifetime total", [m(f.split.lifetime_total) if f and f.split else "—" for f in ft]),
        ]
    return f'<table id="summary"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def breakdown_figure(summary: EvaluationSummary, months: int | None = None, currency: str = "") -> go.Figure:
    """Where each configuration's money goes, per reference VM-month, stacked."""
    configs = summary.configurations
    labels = [_label(c.rank) for c in configs]
    fig = go.Figure()
    for key in BREAKDOWN_KEYS:
        fig.add_bar(name=COST_LABELS[key], x=labels, y=[c.breakdown[key] / c.vms_per_node for c in configs],
                    hovertext=[c.id for c in configs])  # fmt: skip
    life = f", {months}-month lifetime" if months else ""
    fig.update_layout(barmode="stack", title=f"Cost breakdown per reference VM-month{life} ({currency})",
                      yaxis_title=f"{currency} per VM-month", xaxis_title="rank")  # fmt: skip
    return fig


def resource_figure(summary: EvaluationSummary, months: int, currency: str) -> go.Figure:
    configs = summary.configurations
    labels = [_label(c.rank) for c in configs]
    panels = (
        ("cost_per_vcpu_month", f"{currency} per vCPU-month"),
        ("cost_per_gb_ram_month", f"{currency} per GB-RAM-month"),
        ("cost_per_tb_month", f"{currency} per TB-month"),
        ("cost_per_kiops_month", f"{currency} per 1,000 IOPS-month"),
    )
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in panels])
    for index, (field, title) in enumerate(panels):
        fig.add_bar(x=labels, y=[getattr(c, field) for c in configs], name=title, showlegend=False,
                    hovertext=[c.id for c in configs], row=index // 2 + 1, col=index % 2 + 1)  # fmt: skip
    fig.update_layout(title=f"Cost per delivered resource, {months}-month lifetime ({currency})", height=650)
    return fig


def fleet_figure(fleet: FleetPlan, currency: str = "") -> go.Figure:
    """Horizontal bars: configuration names read left to right, never rotated."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Nodes per configuration", "Utilisation (%)"),
                        column_widths=[0.6, 0.4], horizontal_spacing=0.25)  # fmt: skip
    names = [n.id.rsplit("/", 1)[0].replace("/", " · ") for n in fleet.nodes]
    fig.add_bar(y=names, x=[n.count for n in fleet.nodes], orientation="h", showlegend=False,
                text=[str(n.count) for n in fleet.nodes], row=1, col=1)  # fmt: skip
    fig.add_bar(y=[k.replace("_", " ") for k in fleet.utilisation], x=[v * 100 for v in fleet.utilisation.values()],
                orientation="h", showlegend=False, row=1, col=2)  # fmt: skip
    fig.update_xaxes(title_text="%", range=[0, 100], row=1, col=2)
    fig.update_xaxes(title_text="nodes", row=1, col=1)
    fig.update_yaxes(automargin=True)
    fig.update_layout(title=f"Fleet, {fleet.months}-month lifetime: {fleet.total_nodes} nodes, {fleet.racks} racks, "
                            f"{money(fleet.total_monthly_cost, currency)} per month",
                      height=max(400, 60 * len(fleet.nodes) + 200))  # fmt: skip
    return fig


def tornado_figure(result: Sensitivity, currency: str = "") -> go.Figure:
    """Bars from the baseline cost per VM to the cost at each end of each parameter's range."""
    base = result.baseline.cost_per_vm_month or 0.0
    sweeps = list(reversed(result.parameters))  # widest at the top
    names = [PARAMETER_LABELS.get(s.name, s.name) for s in sweeps]
    fig = go.Figure()
    for end, label in (("cost_at_low", "low end"), ("cost_at_high", "high end")):
        values = [getattr(s, end) for s in sweeps]
        ranges = [f"{s.low:g}" if end == "cost_at_low" else f"{s.high:g}" for s in sweeps]
        fig.add_bar(y=names, x=[(v if v is not None else base) - base for v in values], base=base,
                    orientation="h", name=label, text=ranges,
                    hovertext=[money(v, currency) for v in values])  # fmt: skip
    fig.update_yaxes(automargin=True)
    fig.update_layout(barmode="overlay", title=f"Sensitivity of the best cost per VM-month, {result.months}-month "
                      f"lifetime (baseline {money(base, currency)})",
                      xaxis_title=f"{currency} per VM-month")  # fmt: skip
    return fig


def _figures(views: list[LifetimeView], currency: str) -> list[tuple[str, go.Figure]]:
    figures = []
    for v in views:
        figures += [(f"breakdown-{v.months}", breakdown_figure(v.summary, v.months, currency)),
                    (f"resources-{v.months}", resource_figure(v.summary, v.months, currency))]
        if v.fleet is not None:
            figures.append((f"fleet-{v.months}", fleet_figure(v.fleet, currency)))
        if v.sensitivity is not None:
            figures.append((f"tornado-{v.months}", tornado_figure(v.sensitivity, currency)))
    return figures


def render_html(views: list[LifetimeView], assumptions: list[tuple[str, str]], source: str, currency: str,
                evaluated: int, feasible: int) -> str:
    """The whole page; plotly.js is included with the first chart only."""
    charts = [
        fig.to_html(full_html=False, include_plotlyjs=(index == 0), div_id=f"chart-{name}",
                    config={"displaylogo": False, "responsive": True})
        for index, (name, fig) in enumerate(_figures(views, currency))
    ]  # fmt: skip
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lifetimes = ", ".join(f"{v.months}" for v in views)
    intro = (f"{feasible:,} of {evaluated:,} configurations can host the reference VM; lifetimes {lifetimes} "
             f"months; every figure in {html.escape(currency)}. Input: {html.escape(source)}, {stamp}.")
    assumption_rows = "".join(f'<tr><th class="row">{html.escape(k)}</th><td>{html.escape(v)}</td></tr>'
                              for k, v in assumptions)
    rankings = "".join(f"<div>{_table(v.summary, v.months, currency)}</div>" for v in views)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>kvmkit plan — hardware decision ({html.escape(currency)})</title><style>{_STYLE}</style></head><body>"
        f'<h1>Hardware plan: summary and recommendation</h1><p class="note">{intro}</p>'
        f'<p class="recommendation" id="recommendation">{html.escape(recommendation(views, currency))}</p>'
        f"<h2>Lifetimes side by side ({html.escape(currency)})</h2>{summary_table(views, currency)}"
        '<p class="note">capex: hardware, deployment, node and rack network (one-off); opex: support, licences, '
        "power, rack rent, operations (monthly). Lifetime total = capex + opex × months.</p>"
        f'<h2>Assumptions</h2><table id="assumptions">{assumption_rows}</table>'
        f"<h2>Rankings</h2>{rankings}"
        + "".join(f"<section>{chart}</section>" for chart in charts)
        + "</body></html>\n"
    )
