"""The CLI edge of SLO control, shared by `kvmkit congestion` and `kvmkit memory`: `policy`, `enforce` and
`revert` print the same way (tables, or --json of the records) and keep the journal in the same place.

Each capability passes what is its own: its policy model and standings table, its planner and its backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel

from kvmkit import config
from kvmkit.confirm import go_ahead
from kvmkit.errors import InvalidInput, OperationFailed
from kvmkit.output import print_json, print_table
from kvmkit.sampling.history import History
from kvmkit.slo.journal import Journal, Outcome, apply
from kvmkit.slo.policy import Action

ReportT = TypeVar("ReportT", bound=BaseModel)

# Options both capabilities' policy, enforce, revert and advise take, word for word
ADVISE_HISTORY = typer.Option(..., "--history", help="A recording made by `sample --history`.")
ADVISE_PERCENTILE = typer.Option(95, help="Percentile of intervals the SLO applies to.")
POLICY_HISTORY = typer.Option(None, "--history", help="Judge this recording against it.")
POLICY_WINDOW = typer.Option(None, help="Seconds of the recording to judge (default: policy's).")
ENFORCE_POLICY = typer.Option(..., "--policy", help="Policy file (TOML).")
ENFORCE_HISTORY = typer.Option(None, "--history", help="Judge this recording (else sample).")
ENFORCE_WINDOW = typer.Option(None, help="Seconds to judge (default: the policy's window_s).")
ENFORCE_DRY_RUN = typer.Option(False, "--dry-run", help="Print the actions; change nothing.")
REVERT_DRY_RUN = typer.Option(False, "--dry-run", help="Print what would be put back.")


def journal_option(capability: str) -> Any:
    """`--journal`, whose help names the capability's default folder."""
    return typer.Option(None, help=f"Action journal (default: <state_dir>/{capability}/).")


def journal_path(capability: str, journal: Path | None) -> Path:
    """The action journal: `--journal`, else <state_dir>/<capability>/journal.jsonl."""
    return journal or config.load().state_dir / capability / "journal.jsonl"


def recorded_window(history: History[ReportT], path: Path, window_s: float) -> list[ReportT]:
    """The reports of the last window_s seconds of the recording (relative to its end, not to now)."""
    return list(history.stream(path, since=history.last_time(path) - window_s))


def slo_or_strictest(slo_pct: float | None, policy_file: Path | None, strictest: Callable[[Path], float]) -> float:
    """`advise`'s SLO: --slo-pct, else the strictest class SLO of --policy."""
    if slo_pct is not None:
        return slo_pct
    if policy_file is None:
        raise InvalidInput("give --slo-pct or --policy (its strictest class SLO is used)")
    return strictest(policy_file)


def show_policy(
    loaded: BaseModel, rows: Sequence[BaseModel], as_json: bool, class_columns: Sequence[str],
    class_rows: Sequence[Sequence[Any]], print_standings: Callable[[], None] | None,
) -> None:  # fmt: skip
    """`policy`: the classes, and with a history how each VM stands against its class."""
    if as_json:
        print_json({"policy": loaded, "standings": rows})
        return
    print_table("classes", class_columns, class_rows)
    if print_standings is not None:
        print_standings()


def print_outcomes(outcomes: list[Outcome], title: str) -> None:
    print_table(title, ["id", "VM", "param", "old", "new", "state", "reason / detail"],
                [[o.id, o.domain, o.param, o.old, o.new, o.state, o.detail or o.reason] for o in outcomes])  # fmt: skip


def enforce(
    rows: Sequence[BaseModel],
    plan: Callable[[dict[str, dict[str, int]]], list[Action]],
    backend: Any,
    capability: str,
    journal: Path | None,
    dry_run: bool,
    as_json: bool,
    print_standings: Callable[[], None],
    yes: bool = False,
) -> None:
    """`enforce`: plan against what libvirt reports now, apply (or only print: --dry-run), journal, and fail in one
    line if any action failed (the rest stay applied and journaled, for `revert`). Without --dry-run the plan is
    shown and asked for on a terminal, or needs --yes. Closes the backend."""
    try:
        current = {d: backend.parameters(d) for d in backend.domains()}
        actions = plan(current)
        if not dry_run:
            go_ahead(f"{capability} enforce", [f"{a.domain}: {a.param} {a.old} → {a.new} ({a.reason})"
                                               for a in actions], yes)
        outcomes = apply(actions, backend, None if dry_run else Journal(journal_path(capability, journal)))
    finally:
        backend.close()
    if as_json:
        print_json({"standings": rows, "actions": outcomes, "dry_run": dry_run})
    else:
        print_standings()
        print_outcomes(outcomes, "actions (dry run: nothing changed)" if dry_run else "actions")
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        raise OperationFailed(f"{len(failed)} of {len(outcomes)} actions failed; the rest are journaled")


def revert(
    backend: Any, journal: Path, undo: Callable[..., list[Outcome]], dry_run: bool, as_json: bool,
    yes: bool = False, capability: str = "revert",
) -> None:
    """`revert`: undo what the journal says `enforce` did, newest first; `undo(backend, journal, dry_run=…)` is
    the capability's revert. Without --dry-run its plan is shown and asked for, or needs --yes. Closes the
    backend."""
    try:
        if not dry_run:
            planned = undo(backend, Journal(journal), dry_run=True)
            go_ahead(f"{capability} revert", [f"{o.domain}: {o.param} {o.new} → {o.old}" for o in planned
                                              if o.state != "skipped"], yes)
        outcomes = undo(backend, Journal(journal), dry_run=dry_run)
    finally:
        backend.close()
    if as_json:
        print_json(outcomes)
    else:
        print_outcomes(outcomes, f"revert from {journal}")
