"""`kvmkit tune vm`: judge VM definitions per goal; `apply` fixes them (journaled), `rollback` undoes.

`kvmkit tune vm web1 --goal latency` is `kvmkit tune vm check web1 --goal latency`: the group runs `check` when
its first word is not one of its commands. Exit codes: 0 nothing to fix; 1 a FAIL found; 2 bad input; 3 unknown
VM or no journal; 4 an owned VM (CloudStack, Nova) or a pending/changed journal; 6 libvirt refused the definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

from kvmkit import config
from kvmkit.confirm import DRY_RUN, YES, go_ahead
from kvmkit.errors import InvalidInput
from kvmkit.output import console, print_json, print_table
from kvmkit.tune.model import Status
from kvmkit.tune.vm import edge
from kvmkit.tune.vm.finding import GOALS
from kvmkit.tune.vm.judge import VmReport, check_goal
from kvmkit.virt.connection import connection


class _CheckByDefault(TyperGroup):
    """A group whose first word, when it is not a command, is a VM name for `check`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["check", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_CheckByDefault, no_args_is_help=True, add_completion=False,
                  help="Judge each VM's libvirt definition for a goal; fix it with a journal and rollback.")

GoalOpt = Annotated[str, typer.Option("--goal", "-g", help=f"One of {', '.join(GOALS)}.", callback=check_goal)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ConnectOpt = Annotated[str | None, typer.Option("--connect", "-c", help="libvirt URI (default: from the config).")]
HistoryOpt = Annotated[Path | None, typer.Option("--history", help="A `kvmkit congestion` history (JSON lines): "
                                                                    "the pinning check shows what it measured.")]
STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.NA: "dim",
         Status.UNKNOWN: "magenta"}


def _uri(connect: str | None) -> str:
    return connect or config.load().libvirt_uri


def _journal_dir() -> Path:
    return config.load().state_dir / "tune" / "vm"


def _contention(history_file: Path | None, doms: list) -> dict | None:
    """Each chosen VM's contention over the history, streamed (a VM it never saw is simply not in it)."""
    if history_file is None:
        return None
    from kvmkit.congestion import history
    from kvmkit.tune.vm import measured

    return measured.summarize(history.stream(history_file), {dom.name() for dom in doms})


def _print(report: VmReport) -> None:
    owner = f", managed by {report.owner}: its knobs, not a redefine" if report.owner else ""
    rows = [(f"[{STYLE[f.status]}]{f.status.value}[/]", escape(f.check), escape(f.current), escape(f.expected))
            for f in report.findings]
    print_table(f"kvmkit tune vm — {report.vm} — goal {report.goal}{owner}",
                ["status", "check", "current", "expected"], rows)
    for f in report.to_fix:
        console.print(f"[{STYLE[f.status]}]{f.status.value}[/] [bold]{escape(f.check)}[/]: {escape(f.why)}")
        console.print(f"    source: {escape(f.source)}", style="dim", soft_wrap=True)
        if report.owner:
            console.print(f"    {report.owner}: {escape(f.knobs.get(report.owner, 'no setting known'))}")
            if report.owner == "cloudstack" and "extraconfig" in f.knobs.get("cloudstack", "") and f.fix_after:
                console.print(f"      extraconfig: {escape(f.fix_after)}", soft_wrap=True)
        elif f.fix_after:
            tag = "" if f.auto else " (by hand: `apply` leaves it)"
            console.print(f"    fix{tag}:\n{_diff(f.fix_before, f.fix_after)}", soft_wrap=True)


def _diff(before: str, after: str) -> str:
    """Each changed element on its own '-'/'+' line, indented (one line per element the fix touches)."""
    return "\n".join([f"      - {escape(line)}" for line in before.splitlines()]
                     + [f"      + {escape(line)}" for line in after.splitlines()])


@app.command()
def check(
    vms: Annotated[list[str] | None, typer.Argument(help="VM names (or --all).")] = None,
    goal: GoalOpt = "balanced",
    every: Annotated[bool, typer.Option("--all", help="Every VM libvirt knows.")] = False,
    history_file: HistoryOpt = None,
    connect: ConnectOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Judge each VM's definition for the goal: why, the source, and the XML fix (or the orchestrator's knob)."""
    if not vms and not every:
        raise InvalidInput("name one or more VMs, or pass --all")
    with connection(_uri(connect)) as conn:
        doms = edge.chosen_domains(conn, vms or [], every)
        contention = _contention(history_file, doms)
        reports = [edge.report_for(conn, dom, goal, contention) for dom in doms]
    if json_out:
        print_json([{**_plain(r), "worst": r.worst} for r in reports])
    else:
        for report in reports:
            _print(report)
    if any(r.worst == Status.FAIL for r in reports):
        raise SystemExit(1)


def _plain(report: VmReport) -> dict:
    import dataclasses

    return {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}


@app.command()
def apply(
    vms: Annotated[list[str], typer.Argument(help="VM names.")],
    goal: GoalOpt = "balanced",
    only: Annotated[list[str] | None, typer.Option("--only", help="Fix only these checks; repeatable.")] = None,
    history_file: HistoryOpt = None,
    connect: ConnectOpt = None,
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    json_out: JsonOpt = False,
) -> None:
    """Change each VM's persistent definition as `check` shows; a running VM takes new pins at once, the rest at
    its next start.
    The old definition goes to a 0600 journal first; `kvmkit tune vm rollback VM` puts it back."""
    outcomes = []
    with connection(_uri(connect)) as conn:
        doms = edge.chosen_domains(conn, vms, False)
        contention = _contention(history_file, doms)
        for dom in doms:
            planned = edge.apply(conn, dom, goal, _journal_dir(), only=set(only or []) or None, dry_run=True,
                                 contention=contention)
            if not dry_run:
                go_ahead(f"kvmkit tune vm apply {planned.vm}",
                         [f"{c}: {b} → {a}" for c, b, a in planned.before_after], yes)
                planned = edge.apply(conn, dom, goal, _journal_dir(), only=set(only or []) or None,
                                     contention=contention)
            outcomes.append(planned)
    if json_out:
        print_json(outcomes)
        return
    for o in outcomes:
        verb = "would change" if o.dry_run else "changed"
        console.print(f"[bold]{o.vm}[/]: {verb} {len(o.fixed)} setting(s): {', '.join(o.fixed) or 'none'}")
        for check_id, before, after in o.before_after:
            console.print(f"  {escape(check_id)}\n{_diff(before, after)}", soft_wrap=True)
        if o.journal:
            console.print(f"  journal {o.journal}; undo with `kvmkit tune vm rollback {o.vm}`")
        if o.live:
            console.print(f"  {'would take' if o.dry_run else 'took'} live (no restart): {', '.join(o.live)}")
        for why in o.not_live:
            console.print(f"  not taken live: {escape(why)}")
        if o.restart_needed and not o.dry_run:
            console.print("  the VM is running: the rest of the new definition takes effect at its next start")


@app.command()
def rollback(
    vm: Annotated[str, typer.Argument(help="VM name.")],
    connect: ConnectOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Roll back even if the definition changed since.")] = False,
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    json_out: JsonOpt = False,
) -> None:
    """Put back the definition an earlier `tune vm apply` journaled."""
    with connection(_uri(connect)) as conn:
        pending = edge.pending_journal(conn, vm, _journal_dir())
        if dry_run:
            record = pending
        else:
            go_ahead(f"kvmkit tune vm rollback {vm}", [f"redefine {vm} as it was before `tune vm apply` "
                                                       f"({', '.join(pending.checks)})"], yes)
            record = edge.rollback(conn, vm, _journal_dir(), force=force)
    summary = {"vm": record.vm, "goal": record.goal, "applied_at": record.created, "checks": record.checks,
               "dry_run": dry_run}
    if json_out:
        print_json(summary)
    else:
        verb = "would restore" if dry_run else "restored"
        console.print(f"{vm}: {verb} the definition from before {record.created} ({', '.join(record.checks)})")


@app.command()
def measure(
    vm: Annotated[str, typer.Argument(help="A running VM with fio in the guest.")],
    target: Annotated[str, typer.Option("--target", "-t", help="A file path in the guest for fio.")],
    goal: GoalOpt = "throughput",
    only: Annotated[list[str] | None, typer.Option("--only", help="Measure only these fixes; repeatable.")] = None,
    size: Annotated[str, typer.Option(help="fio working set.")] = "64M",
    runtime: Annotated[float, typer.Option(help="Seconds per measured job.")] = 5.0,
    undo: Annotated[bool, typer.Option("--undo", help="Roll the fix back once measured.")] = False,
    dry_run: bool = DRY_RUN,
    shutdown_timeout: Annotated[float, typer.Option(help="Seconds a guest gets to shut down before a hard "
                                                         "power-off.")] = 120.0,
    connect: ConnectOpt = None,
    yes: bool = YES,
    json_out: JsonOpt = False,
) -> None:
    """Bench the VM (quick fio suite in the guest), apply the fixes, restart it, bench again: print after/before
    per job and say whether the fix measured better or worse. The VM is restarted (twice with --undo)."""
    from kvmkit.bench.engine import BenchOptions
    from kvmkit.bench.units import parse_size
    from kvmkit.tune.vm import measure as measure_mod
    from kvmkit.virt.connection import lookup

    options = BenchOptions(size_bytes=parse_size(size), runtime_s=runtime, ramp_s=1.0, label=vm)
    with connection(_uri(connect)) as conn:
        dom = lookup(conn, vm)
        _r, _x, _n, chosen = edge.plan(conn, dom, goal, set(only or []) or None)
        if dry_run:
            if json_out:
                print_json({"vm": vm, "goal": goal, "dry_run": True, "would_fix": [f.check for f in chosen],
                            "undo": undo})
            else:
                console.print(f"{vm}: would bench, apply {', '.join(f.check for f in chosen) or 'nothing'}, "
                              "restart, bench again" + (", roll back, restart" if undo else ""))
            return
        go_ahead(f"kvmkit tune vm measure {vm}", [f"bench, apply {', '.join(f.check for f in chosen)}, restart "
                                                  f"{vm}, bench again" + (", roll back, restart" if undo else "")],
                 yes)
        result = measure_mod.measure(conn, dom, goal, _journal_dir(), only=set(only or []) or None, target=target,
                                     options=options, undo=undo, shutdown_timeout_s=shutdown_timeout)
    if json_out:
        print_json(result)
        return
    rows = [(r.job, f"{r.iops_before:,.0f}", f"{r.iops_after:,.0f}", f"{r.iops_ratio:.2f}×",
             f"{r.p99_ratio:.2f}×" if r.p99_ratio else "") for r in result.jobs]
    print_table(f"kvmkit tune vm measure — {vm} — {', '.join(result.fixed)}",
                ["job", "IOPS before", "IOPS after", "IOPS after/before", "p99 after/before"], rows)
    console.print(f"geometric mean IOPS ratio {result.iops_geomean_ratio:.2f}×: the fix measured "
                  f"[bold]{result.verdict}[/]{' (rolled back)' if result.undone else ''}; "
                  f"kvmkit peak RSS {result.peak_rss_mib:.0f} MiB")
