"""One self-contained HTML page of a plan: ranking, cost breakdown, cost per resource, fleet, tornado.

plotly.js is inlined once (about 4.6 MB) so the page opens with no network: on a laptop on a plane, or
attached to a purchase request. `render_html` returns the text; writing it is the CLI's job.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvmkit.plan.costmodel import BREAKDOWN_KEYS
from kvmkit.plan.fleet import FleetPlan
from kvmkit.plan.records import EvaluationSummary
from kvmkit.plan.render import money
from kvmkit.plan.sensitivity import Sensitivity

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.id { text-align: left; font-family: monospace; }
.note { color: #666; font-size: 0.9em; }
"""


def _label(rank: int) -> str:
    return f"#{rank}"


def _table(summary: EvaluationSummary) -> str:
    head = ("#", "configuration", "per VM/mo", "VMs/node", "binds", "nodes/rack", "node/mo", "vCPU/mo",
            "GB/mo", "TB/mo", "kIOPS/mo")  # fmt: skip
    rows = []
    for c in summary.configurations:
        cells = (c.rank, c.id, money(c.cost_per_vm_month), c.vms_per_node,
                 f"{c.binding_resource} · {c.rack_binding.replace('_', ' ')}", c.nodes_per_rack,
                 money(c.monthly_cost_per_node), money(c.cost_per_vcpu_month), money(c.cost_per_gb_ram_month),
                 money(c.cost_per_tb_month), money(c.cost_per_kiops_month))  # fmt: skip
        rows.append("<tr>" + "".join(
            f'<td class="id">{html.escape(str(v))}</td>' if i == 1 else f"<td>{html.escape(str(v))}</td>"
            for i, v in enumerate(cells)) + "</tr>")  # fmt: skip
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table id="ranking"><tr>{header}</tr>{"".join(rows)}</table>'


def breakdown_figure(summary: EvaluationSummary) -> go.Figure:
    """Where each configuration's money goes, per reference VM-month, stacked."""
    configs = summary.configurations
    labels = [_label(c.rank) for c in configs]
    fig = go.Figure()
    for key in BREAKDOWN_KEYS:
        fig.add_bar(name=key.replace("_", " "), x=labels,
                    y=[c.breakdown[key] / c.vms_per_node for c in configs],
                    hovertext=[c.id for c in configs])  # fmt: skip
    fig.update_layout(barmode="stack", title="Cost breakdown per reference VM-month",
                      yaxis_title="per VM-month", xaxis_title="rank")  # fmt: skip
    return fig


def resource_figure(summary: EvaluationSummary) -> go.Figure:
    configs = summary.configurations
    labels = [_label(c.rank) for c in configs]
    panels = (
        ("cost_per_vcpu_month", "per vCPU-month"),
        ("cost_per_gb_ram_month", "per GB-RAM-month"),
        ("cost_per_tb_month", "per TB-month"),
        ("cost_per_kiops_month", "per 1,000 IOPS-month"),
    )
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in panels])
    for index, (field, title) in enumerate(panels):
        fig.add_bar(x=labels, y=[getattr(c, field) for c in configs], name=title, showlegend=False,
                    hovertext=[c.id for c in configs], row=index // 2 + 1, col=index % 2 + 1)  # fmt: skip
    fig.update_layout(title="Cost per delivered resource", height=650)
    return fig


def fleet_figure(fleet: FleetPlan) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Nodes per configuration", "Utilisation"),
                        column_widths=[0.6, 0.4])  # fmt: skip
    fig.add_bar(x=[n.id for n in fleet.nodes], y=[n.count for n in fleet.nodes], showlegend=False, row=1, col=1)
    fig.add_bar(x=list(fleet.utilisation), y=[v * 100 for v in fleet.utilisation.values()], showlegend=False,
                row=1, col=2)  # fmt: skip
    fig.update_yaxes(title_text="%", range=[0, 100], row=1, col=2)
    fig.update_layout(title=f"Fleet: {fleet.total_nodes} nodes, {fleet.racks} racks, "
                            f"{money(fleet.total_monthly_cost)} per month", height=500)  # fmt: skip
    return fig


def tornado_figure(result: Sensitivity) -> go.Figure:
    """Bars from the baseline cost per VM to the cost at each end of each parameter's range."""
    base = result.baseline.cost_per_vm_month or 0.0
    sweeps = list(reversed(result.parameters))  # widest at the top
    names = [s.name for s in sweeps]
    fig = go.Figure()
    for end, label in (("cost_at_low", "low end"), ("cost_at_high", "high end")):
        values = [getattr(s, end) for s in sweeps]
        ranges = [f"{s.low:g}" if end == "cost_at_low" else f"{s.high:g}" for s in sweeps]
        fig.add_bar(y=names, x=[(v if v is not None else base) - base for v in values], base=base,
                    orientation="h", name=label, text=ranges, hovertext=[money(v) for v in values])  # fmt: skip
    fig.update_layout(barmode="overlay", title=f"Sensitivity of the best cost per VM-month (baseline "
                      f"{money(base)})", xaxis_title="per VM-month")  # fmt: skip
    return fig


def render_html(summary: EvaluationSummary, fleet: FleetPlan | None, result: Sensitivity | None,
                source: str) -> str:  # fmt: skip
    """The whole page; plotly.js is included with the first chart only."""
    figures = [("breakdown", breakdown_figure(summary)), ("resources", resource_figure(summary))]
    if fleet is not None:
        figures.append(("fleet", fleet_figure(fleet)))
    if result is not None:
        figures.append(("tornado", tornado_figure(result)))
    charts = [
        fig.to_html(full_html=False, include_plotlyjs=(index == 0), div_id=f"chart-{name}",
                    config={"displaylogo": False, "responsive": True})
        for index, (name, fig) in enumerate(figures)
    ]  # fmt: skip
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (
        f"{summary.feasible:,} of {summary.evaluated:,} configurations can host the reference VM; "
        f"lifetimes {', '.join(map(str, summary.months))} months. Input: {html.escape(source)}, {stamp}."
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>kvmkit plan</title><style>{_STYLE}</style></head><body>"
        f'<h1>kvmkit plan</h1><p class="note">{intro}</p><h2>Ranking</h2>{_table(summary)}'
        + "".join(f"<section>{chart}</section>" for chart in charts)
        + "</body></html>\n"
    )
