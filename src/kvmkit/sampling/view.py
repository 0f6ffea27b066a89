"""Rich pieces both `top` screens (congestion, memory) are made of. Printing only, no arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def vm_table(columns: Sequence[str]) -> Table:
    """One row per VM: the domain column left-aligned, figures right-aligned."""
    table = Table(header_style="bold", expand=False)
    for column in columns:
        table.add_column(column, justify="left" if column == "VM" else "right")
    return table


def footnote(label: str, notes: Sequence[tuple[str, str]], shown: int, more: str = "") -> Text:
    """`label: what: why; …` for the first `shown` notes, then how many more (`more` says where they are)."""
    text = "; ".join(f"{what}: {why}" for what, why in notes[:shown])
    rest = f" (+{len(notes) - shown} more{more})" if len(notes) > shown else ""
    return Text(f"{label}: {text}{rest}", style="dim")
