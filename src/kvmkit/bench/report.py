"""The self-contained HTML comparison report: plotly figures with plotly.js inlined once, no network.

Self-contained because reports are mailed, attached to tickets and opened on air-gapped hosts; a CDN
link would show an empty page there. Sections: notes, side-by-side table, QD curves (IOPS, p99), latency
percentiles, latency over time, CPU per I/O, SNIA steady-state rounds.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from kvmkit.bench import compare
from kvmkit.bench.schema import BenchRun
from kvmkit.errors import InvalidInput

PERCENTILES = (
    ("p50", "p50"),
    ("p90", "p90"),
    ("p99", "p99"),
    ("p99_9", "p99.9"),
    ("p99_99", "p99.99"),
    ("max", "max"),
)


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.{digits}f}"


def table_figure(runs: Sequence[BenchRun]) -> go.Figure:
    header = ["job"]
    columns: list[list[str]] = [[row.job for row in compare.rows(runs)]]
    for index, run in enumerate(runs):
        header += [f"<b>{html.escape(run.label)}</b><br>IOPS", "MiB/s", "p99 µs", "p99.9 µs", "CPU µs/IO"]
        if index:
            header.append("Δ IOPS %")
        values: list[list[str]] = [[], [], [], [], []] + ([[]] if index else [])
        for row in compare.rows(runs):
            c = row.cells[index]
            parts = (
                [_fmt(c.iops, 0), _fmt(c.mib_s), _fmt(c.p99_us), _fmt(c.p99_9_us), _fmt(c.cpu_us_per_io, 2)]
                if c
                else [""] * 5
            )
            if index:
                parts.append(_fmt(row.iops_change_pct(index)))
            for column, text in zip(values, parts, strict=True):
                column.append(text)
        columns += values
    widths = [3] + [1.6 if h.endswith("IOPS") else 1 for h in header[1:]]
    fig = go.Figure(
        go.Table(
            columnwidth=widths,
            header={"values": header, "height": 48, "align": "center"},
            cells={"values": columns, "height": 26, "align": ["left"] + ["right"] * (len(columns) - 1)},
        )
    )
    # Tall enough that every row shows without an inner scrollbar.
    fig.update_layout(
        title="Side by side", height=150 + 26 * len(columns[0]), margin={"l": 10, "r": 10, "t": 50, "b": 10}
    )
    return fig


def curve_figures(runs: Sequence[BenchRun]) -> list[go.Figure]:
    all_curves = [c for run in runs for c in compare.curves(run)]
    if not all_curves:
        return []
    iops, p99 = go.Figure(), go.Figure()
    for c in all_curves:
        name = f"{c.run} · {c.rw} {c.bs // 1024}k"
        iops.add_trace(go.Scatter(x=c.qds, y=c.iops, mode="lines+markers", name=name))
        p99.add_trace(go.Scatter(x=c.qds, y=c.p99_us, mode="lines+markers", name=name))
    iops.update_layout(title="Queue depth vs IOPS", xaxis={"type": "log", "title": "iodepth"}, yaxis={"title": "IOPS"})
    p99.update_layout(
        title="Queue depth vs p99 latency",
        xaxis={"type": "log", "title": "iodepth"},
        yaxis={"type": "log", "title": "p99 µs"},
    )
    return [iops, p99]


def percentile_figure(runs: Sequence[BenchRun]) -> go.Figure:
    fig = go.Figure()
    labels = [label for _, label in PERCENTILES]
    for run in runs:
        for job in run.measured():
            main = job.main_direction()
            if main is None:
                continue
            values = [getattr(main.latency, key) for key, _ in PERCENTILES]
            fig.add_trace(
                go.Scatter(
                    x=labels,
                    y=[None if v is None else v / 1000 for v in values],
                    mode="lines+markers",
                    name=f"{run.label} · {job.name}",
                )
            )
    fig.update_layout(title="Latency percentiles", yaxis={"type": "log", "title": "µs"})
    return fig


def timeline_figure(runs: Sequence[BenchRun]) -> go.Figure | None:
    fig = go.Figure()
    for run in runs:
        for job in run.measured():
            if job.latency_series:
                fig.add_trace(
                    go.Scatter(
                        x=[p.t_s for p in job.latency_series],
                        y=[p.mean_ns / 1000 for p in job.latency_series],
                        mode="lines",
                        name=f"{run.label} · {job.name}",
                    )
                )
    if not fig.data:
        return None
    fig.update_layout(
        title="Latency over time (fio log, windowed mean)",
        xaxis={"title": "s"},
        yaxis={"type": "log", "title": "µs"},
    )
    return fig


def cpu_figure(runs: Sequence[BenchRun]) -> go.Figure:
    fig = go.Figure()
    for run in runs:
        jobs = [j for j in run.measured() if j.cpu_us_per_io is not None]
        fig.add_trace(go.Bar(x=[j.name for j in jobs], y=[j.cpu_us_per_io for j in jobs], name=run.label))
    fig.update_layout(title="CPU per I/O (fio usr+sys)", barmode="group", yaxis={"title": "µs CPU / I/O"})
    return fig


def steady_figure(runs: Sequence[BenchRun]) -> go.Figure | None:
    fig = go.Figure()
    for run in runs:
        if run.steady_state and run.steady_state.rounds:
            rounds = run.steady_state.rounds
            fig.add_trace(
                go.Scatter(
                    x=list(range(1, len(rounds) + 1)),
                    y=rounds,
                    mode="lines+markers",
                    name=f"{run.label} (steady at round {run.steady_state.round})",
                )
            )
    if not fig.data:
        return None
    fig.update_layout(title="SNIA rounds: tracking variable", xaxis={"title": "round"}, yaxis={"title": "IOPS"})
    return fig


def _summary(runs: Sequence[BenchRun]) -> str:
    items = []
    for run in runs:
        m = run.machine
        items.append(
            f"<li><b>{html.escape(run.label)}</b>: suite {html.escape(run.suite)}, status {run.status}, "
            f"{html.escape(run.target.kind)} {html.escape(run.target.path)} "
            f"({run.target.size_bytes / 2**20:.0f} MiB), {html.escape(run.fio_version)}, "
            f"{html.escape(m.hostname)} {html.escape(m.kernel)}, {m.cpus} CPU, "
            f"runner {html.escape(m.runner)}, "
            f"wall {run.resources.wall_s:.1f} s, peak RSS kvmkit {run.resources.kvmkit_peak_rss_kib} KiB / "
            f"fio {run.resources.fio_peak_rss_kib} KiB</li>"
        )
    notes = compare.machine_notes(runs) + [f"{r.label}: {w}" for r in runs for w in r.warnings]
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"<ul>{''.join(items)}</ul>" + (f"<h2>Notes</h2><ul class='notes'>{notes_html}</ul>" if notes else "")


def render_html(runs: Sequence[BenchRun]) -> str:
    if not runs:
        raise InvalidInput("compare needs at least one result file")
    figures = [table_figure(runs), *curve_figures(runs), percentile_figure(runs)]
    figures += [f for f in (timeline_figure(runs), steady_figure(runs)) if f is not None]
    figures.append(cpu_figure(runs))
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, fig in enumerate(figures)
    ]
    title = "kvmkit bench: " + " vs ".join(html.escape(r.label) for r in runs)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:1em 2em}}"
        ".notes li{color:#a40}</style></head><body>"
        f"<h1>{title}</h1>{_summary(runs)}"
        + "".join(f"<div class='figure'>{part}</div>" for part in parts)
        + "</body></html>"
    )


def write_html(runs: Sequence[BenchRun], path: Path) -> None:
    """Write via a temporary name and rename, so a reader never sees half a report."""
    text = render_html(runs)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
