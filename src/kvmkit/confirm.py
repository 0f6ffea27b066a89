"""Going ahead with a command that changes the host: show the plan and ask on a terminal; a script must say
`--yes` (docs/cli.md). `--dry-run` shows the same plan and stops."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from kvmkit.errors import InvalidInput
from kvmkit.output import err_console

YES = typer.Option(False, "--yes", "-y", help="Go ahead without asking (needed when stdin is not a terminal).")
DRY_RUN = typer.Option(False, "--dry-run", help="Show the plan; change nothing.")


def go_ahead(command: str, plan: Sequence[str], yes: bool) -> None:
    """Return when the user agreed (or passed --yes); InvalidInput without a terminal; Abort on a no."""
    if yes or not plan:
        return
    if not sys.stdin.isatty():
        raise InvalidInput(f"{command} changes this host and stdin is not a terminal: pass --yes to go ahead "
                           f"(--dry-run shows the plan)")
    err_console.print(f"{command} will:", highlight=False)
    for line in plan:
        err_console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if not typer.confirm("Go ahead?", default=False, err=True):
        raise typer.Abort()
