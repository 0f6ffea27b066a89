"""The CLI edge of measuring, shared by `kvmkit congestion` and `kvmkit memory`: the options both take, the
`sample` loop (print or --json, optionally appended to a history) and the `top` screen."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.live import Live

from kvmkit.errors import InvalidInput
from kvmkit.output import console, print_json_line
from kvmkit.sampling.history import HistoryWriter

ReportT = TypeVar("ReportT", bound=BaseModel)

# Options both capabilities' commands take, word for word
JSON = typer.Option(False, "--json", help="Print JSON (the records the Python API returns).")
SAMPLE_INTERVAL = typer.Option(1.0, help="Seconds between readings.")
SAMPLE_COUNT = typer.Option(1, help="How many intervals to report.")
TOP_INTERVAL = typer.Option(2.0, help="Seconds between refreshes.")
TOP_COUNT = typer.Option(None, help="Stop after this many refreshes (default: until Ctrl-C).")


def check_pids(pids: list[int] | None) -> None:
    """`--pid N` names a live process, or the command stops here with one line."""
    for pid in pids or []:
        if not os.path.exists(f"/proc/{pid}"):
            raise InvalidInput(f"--pid {pid}: no such process")


def print_reports(
    reports: Generator[ReportT, None, None], history_file: Path | None, as_json: bool, render: Callable[[ReportT], Any]
) -> None:
    """`sample`: each report as one JSON line or a rendered table, and appended to `history_file` if given.

    The history is opened before the first reading, so a path that cannot be appended to fails at once."""
    writer = HistoryWriter(history_file) if history_file else None
    try:
        for report in reports:
            if writer:
                writer.append(report)
            if as_json:
                print_json_line(report)  # JSON Lines, by the output conventions (ISO times with their zone)
            else:
                console.print(render(report))
    finally:
        reports.close()
        if writer:
            writer.close()


def show_live(
    reports: Generator[ReportT, None, None], interval: float, render: Callable[[ReportT, int], Any], limit: int
) -> None:
    """`top`: one screen redrawn with every report, like top or virt-top."""
    with Live(console=console, auto_refresh=False) as live:
        live.update(f"measuring the first {interval:g} s interval …", refresh=True)
        for report in reports:
            live.update(render(report, limit), refresh=True)
