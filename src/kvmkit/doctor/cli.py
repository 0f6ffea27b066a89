"""`kvmkit doctor`: one line per check with its fix; exit 1 when a check failed, 0 otherwise (warnings included)."""

from __future__ import annotations

import typer

from kvmkit.doctor.model import Severity
from kvmkit.output import console, print_json

app = typer.Typer(no_args_is_help=False, add_completion=False, help=__doc__)

MARKS = {Severity.OK: "[green]ok  [/]", Severity.INFO: "[blue]info[/]", Severity.WARN: "[yellow]warn[/]",
         Severity.FAIL: "[red]FAIL[/]"}


@app.callback(invoke_without_command=True)
def doctor(connect: str | None = typer.Option(None, "--connect", "-c",
                                              help="libvirt URI (default from config: qemu:///system)."),
           json_out: bool = typer.Option(False, "--json", help="Print one JSON object: findings, seconds, exit_code.")
           ) -> None:
    """Check this host for every capability: libvirt, guest agents and fsfreeze, reflink pools, the extent limit,
    RBD clusters, backup targets, the state folder, the clock. Exit 1 if any check failed."""
    from kvmkit import config
    from kvmkit.doctor.run import run

    settings = config.load()
    report = run(settings, connect or settings.libvirt_uri)
    if json_out:
        print_json({**report.model_dump(mode="json"), "exit_code": report.exit_code})
    else:
        for f in report.findings:
            line = f"{MARKS[f.severity]} {f.check:<13} {f.subject}: {f.message}"
            console.print(line + (f"\n       fix: {f.fix}" if f.fix and f.severity is not Severity.OK else ""),
                          markup=True, highlight=False, soft_wrap=True)
        failed = sum(f.severity is Severity.FAIL for f in report.findings)
        console.print(f"doctor: {len(report.findings)} checks, {failed} failed, in {report.seconds:.2f} s",
                      highlight=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
