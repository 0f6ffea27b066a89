"""The `kvmkit` command: mounts one sub-app per capability and turns KvmkitError into one line + exit code."""

from __future__ import annotations

import logging
import sys

import libvirt
import typer

from kvmkit import __version__
from kvmkit.bench.cli import app as bench_app
from kvmkit.congestion.cli import app as congestion_app
from kvmkit.errors import KvmkitError
from kvmkit.lab.cli import app as lab_app
from kvmkit.plan.cli import app as plan_app
from kvmkit.snapshot.cli import app as snapshot_app
from kvmkit.tune.cli import app as tune_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(lab_app, name="lab",
              help="A real local KVM lab: libvirt + QEMU VMs with qemu-guest-agent, XFS, Ceph.")
app.add_typer(snapshot_app, name="snapshot",
              help="Storage-based live VM snapshots: create, list, revert, delete, recover.")
app.add_typer(congestion_app, name="congestion", help="Per-VM CPU congestion: live view, exporter, SLO control.")
app.add_typer(bench_app, name="bench", help="Storage benchmarks done right (fio): suites, lint, compare.")
app.add_typer(plan_app, name="plan", help="Hardware by total cost per delivered resource; fleet MILP; HTML report.")
app.add_typer(tune_app, name="tune", help="Audit a KVM host's BIOS/OS settings against a goal; fix with rollback.")

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
