"""`kvmkit memory`: RAM oversubscription against the memory pressure each VM feels: samples, live view, advice,
control.

Each command is a thin call into the package's functions; `--json` prints the same records they return.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live

from kvmkit import config
from kvmkit.errors import InvalidInput
from kvmkit.memory import history, view
from kvmkit.memory.collector import MemCollector
from kvmkit.memory.procfs import MemReader
from kvmkit.output import console

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

_JSON = typer.Option(False, "--json", help="Print JSON (the records the Python API returns).")
_PIDS = typer.Option(None, "--pid", help="Measure only these QEMU processes (repeatable); default: every QEMU.")
_URI = typer.Option(None, "--uri", help="libvirt URI for balloon figures (default: from the kvmkit config).")
_NO_LIBVIRT = typer.Option(False, "--no-libvirt", help="Do not ask libvirt (balloon figures are then null).")


@contextmanager
def reader(pids: list[int] | None, uri: str | None, no_libvirt: bool) -> Iterator[MemReader]:
    """A reader with libvirt's balloon figures when reachable; unreachable libvirt makes them null with the reason."""
    for pid in pids or []:
        if not os.path.exists(f"/proc/{pid}"):
            raise InvalidInput(f"--pid {pid}: no such process")
    balloons = None
    reason = "libvirt not asked (--no-libvirt)"
    if not no_libvirt:
        from kvmkit.memory.balloon import LibvirtBalloons

        target = uri or config.load().libvirt_uri
        try:
            balloons = LibvirtBalloons(target)
        except Exception as exc:  # libvirt.libvirtError, or no bindings: the rest is still measured
            message = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
            reason = f"libvirt unreachable at {target}: {message}"
    mem = MemReader(pids=pids or None, balloons=balloons.read if balloons else None, balloon_reason=reason)
    try:
        yield mem
    finally:
        mem.close()
        if balloons is not None:
            balloons.close()


@app.command()
def sample(
    interval: float = typer.Option(1.0, help="Seconds between readings."),
    count: int = typer.Option(1, help="How many intervals to report."),
    as_json: bool = _JSON,
    history_file: Annotated[Path | None, typer.Option("--history", help="Also append each report here.")] = None,
    pids: list[int] | None = _PIDS,
    uri: str | None = _URI,
    no_libvirt: bool = _NO_LIBVIRT,
) -> None:
    """Measure `count` intervals; with --json one JSON object per line (per interval), for scripts."""
    writer = history.HistoryWriter(history_file) if history_file else None
    try:
        with reader(pids, uri, no_libvirt) as mem:
            for report in MemCollector(mem).run(interval, count):
                if writer:
                    writer.append(report)
                if as_json:
                    typer.echo(report.model_dump_json())
                else:
                    console.print(view.render(report))
    finally:
        if writer:
            writer.close()


@app.command()
def top(
    interval: float = typer.Option(2.0, help="Seconds between refreshes."),
    count: int | None = typer.Option(None, help="Stop after this many refreshes (default: until Ctrl-C)."),
    limit: int = typer.Option(40, help="Show at most this many VMs (most pressure first)."),
    pids: list[int] | None = _PIDS,
    uri: str | None = _URI,
    no_libvirt: bool = _NO_LIBVIRT,
) -> None:
    """A live table of VMs sorted by memory pressure, like top or virt-top."""
    with reader(pids, uri, no_libvirt) as mem, Live(console=console, auto_refresh=False) as live:
        live.update(f"measuring the first {interval:g} s interval …", refresh=True)
        for report in MemCollector(mem).run(interval, count):
            live.update(view.render(report, limit), refresh=True)
