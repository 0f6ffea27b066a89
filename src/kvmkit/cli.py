"""The `kvmkit` command: mounts one sub-app per capability and turns KvmkitError into one line + exit code."""

from __future__ import annotations

import importlib
import logging
import sys

import libvirt
import typer

from kvmkit import __version__
from kvmkit.errors import KvmkitError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

# (name, module, help): a sub-app is imported only when used, so `kvmkit snapshot …` does not pay for SciPy.
SUBCOMMANDS = [
    ("lab", "kvmkit.lab.cli", "A real local KVM lab: libvirt + QEMU VMs with qemu-guest-agent, XFS, Ceph."),
    ("snapshot", "kvmkit.snapshot.cli", "Storage-based live VM snapshots: create, list, revert, delete, recover."),
    ("backup", "kvmkit.backup.cli", "Back snapshots up to secondary storage: full, incremental, verified restore."),
    ("schedule", "kvmkit.backup.cli:schedule_app", "Scheduled snapshots and backups with retention."),
    ("congestion", "kvmkit.congestion.cli", "Per-VM CPU congestion: live view, exporter, SLO control."),
    ("bench", "kvmkit.bench.cli", "Storage benchmarks done right (fio): suites, lint, compare."),
    ("plan", "kvmkit.plan.cli", "Hardware by total cost per delivered resource; fleet MILP; HTML report."),
    ("tune", "kvmkit.tune.cli", "Audit a KVM host's BIOS/OS settings against a goal; fix with rollback."),
    ("doctor", "kvmkit.doctor.cli", "Is this host ready? One line per check (libvirt, agents, storage, backup)."),
]


def mount(argv: list[str]) -> None:
    """Mount the sub-app the command line names, or all of them (for --help and for unknown names)."""
    names = {name for name, _, _ in SUBCOMMANDS}
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module, help_text in SUBCOMMANDS:
        if wanted not in names or wanted == name:
            module_name, _, attr = module.partition(":")
            sub = getattr(importlib.import_module(module_name), attr or "app")
            app.add_typer(sub, name=name, help=help_text)


_debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kvmkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
) -> None:
    """kvmkit: storage-based live VM snapshots and measured performance for KVM clouds."""
    global _debug
    _debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    try:
        mount(sys.argv[1:])
        # without standalone mode click returns typer.Exit's code instead of exiting: pass it on
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except KvmkitError as exc:
        if _debug:
            raise
        print(f"kvmkit: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("kvmkit: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("kvmkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click's usage errors and anything unforeseen: still one line
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click.ClickException (typer vendors click)
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, libvirt.libvirtError) and not _debug:
            print(f"kvmkit: error: libvirt: {exc.get_error_message()}", file=sys.stderr)
            sys.exit(6)
        if _debug:
            raise
        print(f"kvmkit: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        sys.exit(70)
