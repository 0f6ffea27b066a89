"""`kvmkit tune`: thin CLI over the tune library; `--json` prints the same records the functions return.

Exit codes: 0 all good; 1 `audit` found a FAIL; 2 bad input (unknown goal, malformed profile); 3 missing
capture or rollback file; 4 a rollback file is pending; 6 writes failed (what succeeded was rolled back).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kvmkit import config
from kvmkit.cliinput import existing_folder
from kvmkit.confirm import YES, go_ahead
from kvmkit.errors import InvalidInput
from kvmkit.output import console, print_json, print_table
from kvmkit.tune import apply as apply_mod
from kvmkit.tune import capture as capture_mod
from kvmkit.tune.checks import CHECKS, read_all
from kvmkit.tune.diff import diff as diff_readings
from kvmkit.tune.evaluate import audit as audit_readings
from kvmkit.tune.fixes import shown_paths
from kvmkit.tune.hostfs import LIVE_ROOT, HostView, Unreadable
from kvmkit.tune.model import AuditReport, Reading, Status
from kvmkit.tune.profiles import load_all, load_profile
from kvmkit.tune.vm import cli as vm_cli

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Audit a KVM host's BIOS/OS settings against a goal, explain, fix with rollback.",
)

GoalOpt = Annotated[
    str,
    typer.Option(
        "--goal",
        "-g",
        help="latency, throughput, per-core, per-watt, balanced, a user profile name, or a path to a profile .toml",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        help="Read (and write) the host under this folder: a sysfs-like "
        "tree or an extracted capture. Default: the live host.",
    ),
]
ProfileDirOpt = Annotated[
    list[Path] | None,
    typer.Option("--profile-dir", help="Extra folder of goal profiles (*.toml); repeatable.",
                 callback=lambda folders: [existing_folder(f, "--profile-dir") for f in folders or []] or None),
]
app.add_typer(vm_cli.app, name="vm")
STATUS_STYLE = {
    Status.PASS: "green",
    Status.WARN: "yellow",
    Status.FAIL: "bold red",
    Status.UNKNOWN: "magenta",
    Status.NA: "dim",
}


def _default_rollback_file() -> Path:
    return config.load().state_dir / "tune" / "rollback.json"


def _hostname(host: HostView) -> str:
    try:
        return host.read("/proc/sys/kernel/hostname")
    except Unreadable:
        return "unknown"


@contextmanager
def _source(capture_file: Path | None, root: Path) -> Iterator[tuple[HostView, str]]:
    """(HostView, origin) for a capture file, a tree, or the live host."""
    if capture_file is not None:
        if root != LIVE_ROOT:
            raise InvalidInput("give either --from or --root, not both")
        with capture_mod.opened(capture_file) as (host, _meta):
            yield host, str(capture_file)
    elif root != LIVE_ROOT:
        existing_folder(root, "--root")
        yield capture_mod.view_of(root), str(root)
    else:
        yield HostView(), "live"


def _plain(rows: list[tuple]) -> list[tuple[str, ...]]:
    """Cells of host data must not be read as rich markup ('[cpu] governor' would vanish)."""
    return [tuple(escape("" if c is None else str(c)) for c in row) for row in rows]


def _print_report(report: AuditReport) -> None:
    """A compact table, then one block per finding to act on: why, where the advice comes from, every fix."""
    rows = []
    for f in report.findings:
        why = f.detail if f.status in (Status.UNKNOWN, Status.NA) else f.why
        cells = [escape(c) for c in (f.severity.value, f.check, f.current, f.expected, why)]
        rows.append((f"[{STATUS_STYLE[f.status]}]{f.status.value}[/]", *cells))
    print_table(
        f"kvmkit tune audit — goal {report.goal} — {report.host} ({report.origin})",
        ["status", "sev", "check", "current", "expected", "why (or why unknown)"],
        rows,
    )
    to_fix = [f for f in report.findings if f.status in (Status.FAIL, Status.WARN)]
    if to_fix:
        console.print("\n[bold]How to fix[/]")
    for f in to_fix:
        console.print(f"[{STATUS_STYLE[f.status]}]{f.status.value}[/] [bold]{escape(f.check)}[/]: {escape(f.why)}")
        if f.detail:
            console.print(f"    seen:   {escape(f.detail)}")
        console.print(f"    source: {escape(f.source)}", style="dim")
        for remedy in f.fixes:
            console.print(f"    {remedy.kind + ':':<11} {escape(remedy.text)}")
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if v)
    console.print(f"\nscore [bold]{report.score}[/]/100 for {report.goal} ({counts})")
    console.print("all goals: " + "  ".join(f"{g} {s}" for g, s in sorted(report.scores.items())))


@app.command()
def audit(
    goal: GoalOpt = "balanced",
    capture_file: Annotated[
        Path | None, typer.Option("--from", help="Audit a capture (tar.gz) instead of this host.")
    ] = None,
    root: RootOpt = LIVE_ROOT,
    profile_dir: ProfileDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check every setting the goal cares about: PASS/WARN/FAIL/UNKNOWN, why, and the exact fix. Exit 1 on FAIL."""
    profile = load_profile(goal, profile_dir)
    others = [p for p in load_all(profile_dir) if p.name != profile.name]
    with _source(capture_file, root) as (host, origin):
        report = audit_readings(profile, read_all(host), others, _hostname(host), origin)
    if json_out:
        print_json(report)
    else:
        _print_report(report)
    if report.failed:
        raise SystemExit(1)  # not typer.Exit: the root CLI runs click with standalone_mode=False, which drops it


@app.command()
def apply(
    goal: GoalOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Limit to these checks; repeatable.")] = None,
    root: RootOpt = LIVE_ROOT,
    rollback_file: Annotated[
        Path | None,
        typer.Option("--rollback-file", help="Where the previous values go (default: <state_dir>/tune/rollback.json)."),
    ] = None,
    profile_dir: ProfileDirOpt = None,
    json_out: JsonOpt = False,
    yes: bool = YES,
) -> None:
    """Apply the goal's runtime-safe OS settings (sysfs/sysctl), saving the old values for `rollback` first.
    On the live host it shows the changes and asks (or needs --yes when stdin is not a terminal)."""
    profile = load_profile(goal, profile_dir)
    with _source(None, root) as (host, _origin):
        planned = apply_mod.plan(host, profile, read_all(host), set(only) if only else None)
        if not dry_run and root == LIVE_ROOT:  # a --root tree is a folder, not this host
            go_ahead("kvmkit tune apply", [f"{c.path}: {c.old} → {c.new}" for c in planned.changes], yes)
        result = planned if dry_run else apply_mod.apply(host, planned, rollback_file or _default_rollback_file())
    if json_out:
        print_json(result)
        return
    title = f"kvmkit tune apply --goal {result.goal}{' (dry run)' if dry_run else ''} — root {result.root}"
    if result.changes:  # else the sentence below, not an empty table
        print_table(title, ["check", "path", "old", "new", "outcome"], _plain(_grouped(result.changes)))
    if not result.changes:
        console.print("nothing to change at runtime")
    elif result.rollback_file:
        console.print(f"previous values saved in {result.rollback_file}; undo with `kvmkit tune rollback`")
    if result.not_runtime:
        console.print(
            "not fixable at runtime (see `kvmkit tune audit` for the persistent/BIOS fix): "
            + ", ".join(result.not_runtime)
        )


def _grouped(changes: list[apply_mod.Change]) -> list[tuple[str, ...]]:
    """One row per check and identical change: 64 CPUs' governors are one line, not 64."""
    groups: dict[tuple[str, str, str, str, str], list[str]] = {}
    for c in changes:
        groups.setdefault((c.check, c.old, c.new, c.outcome, c.error), []).append(c.path)
    rows = []
    for (check, old, new, outcome, error), paths in groups.items():
        rows.append((check, shown_paths(paths), old, new, f"{outcome}: {error}" if error else outcome))
    return rows


@app.command()
def rollback(
    root: RootOpt = LIVE_ROOT,
    rollback_file: Annotated[Path | None, typer.Option("--rollback-file", help="The file `apply` wrote.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be restored; write nothing.")] = False,
    json_out: JsonOpt = False,
    yes: bool = YES,
) -> None:
    """Restore the values the last `apply` changed (on the live host: shows them and asks, or needs --yes)."""
    path = rollback_file or _default_rollback_file()
    with _source(None, root) as (host, _origin):
        if dry_run or root == LIVE_ROOT:
            record = apply_mod._load(path)  # the same strict reader rollback itself uses
            planned = [c.model_copy(update={"outcome": "planned"}) for c in record.changes]
        if dry_run:
            changes = planned
        else:
            if root == LIVE_ROOT:
                go_ahead("kvmkit tune rollback", [f"{c.path}: {c.new} → {c.old}" for c in planned], yes)
            changes = apply_mod.rollback(host, path)
    if json_out:
        print_json(changes)
        return
    if not changes:
        console.print(f"{path}: nothing to restore", markup=False, soft_wrap=True)
        return
    print_table(
        f"kvmkit tune rollback{' (dry run)' if dry_run else ''} — {path}",
        ["check", "path", "restored", "was"],
        _plain([(check, path, old, new) for check, path, old, new, _outcome in _grouped(changes)]),
    )


@app.command()
def capture(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    root: RootOpt = LIVE_ROOT,
) -> None:
    """Write a tar.gz of everything the checks read (`kvmkit tune capture > host.tar.gz`)."""
    if output is None and sys.stdout.isatty():
        raise InvalidInput("refusing to write a tar.gz to a terminal: redirect stdout or use --output FILE")
    if root == LIVE_ROOT:
        data = capture_mod.capture()
    else:  # a tree, or an unpacked capture (re-capturing it keeps its probes and recorded errors)
        tree = capture_mod.view_of(existing_folder(root, "--root"))
        data = capture_mod.capture(tree.root, tree.probe_dir, tree.recorded_errors)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)


def _readings(source: str) -> tuple[str, list[Reading]]:
    if source == "live":
        host = HostView()
        return _hostname(host), read_all(host)
    with capture_mod.opened(Path(source)) as (host, meta):
        return str(meta.get("hostname", source)), read_all(host)


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="A capture tar.gz, or 'live' for this host.")],
    b: Annotated[str, typer.Argument(help="A capture tar.gz, or 'live' for this host.")],
    json_out: JsonOpt = False,
) -> None:
    """What differs between two hosts (captures), setting by setting."""
    name_a, readings_a = _readings(a)
    name_b, readings_b = _readings(b)
    differences = diff_readings(readings_a, readings_b)
    if json_out:
        print_json({"a": a, "b": b, "differences": differences})
        return
    if not differences:
        console.print(f"A {a} ({name_a}) and B {b} ({name_b}) agree on all {len(CHECKS)} checks", markup=False,
                      soft_wrap=True)
        return
    print_table(
        f"kvmkit tune diff — A {a} ({name_a}) vs B {b} ({name_b})",
        ["check", "A", "B", "note"],
        _plain([(d.check, d.a, d.b, d.note) for d in differences]),
    )
    console.print(f"{len(differences)} of {len(CHECKS)} checks differ")


@app.command()
def profiles(profile_dir: ProfileDirOpt = None, json_out: JsonOpt = False) -> None:
    """List the goals: built-in, /etc/kvmkit/tune/profiles, and --profile-dir."""
    found = load_all(profile_dir)
    if json_out:
        print_json(found)
        return
    print_table(
        "kvmkit tune goals",
        ["goal", "rules", "description", "file"],
        _plain([(p.name, len(p.rules), p.description, p.path) for p in found]),
    )


@app.command()
def checks(json_out: JsonOpt = False) -> None:
    """List every check a profile can name."""
    if json_out:
        print_json([{"id": c.id, "title": c.title, "area": c.area} for c in CHECKS])
        return
    print_table("kvmkit tune checks", ["check", "area", "title"], _plain([(c.id, c.area, c.title) for c in CHECKS]))
