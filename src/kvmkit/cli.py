"""The `kvmkit` command: mounts one sub-app per capability and turns KvmkitError into one line + exit code."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import traceback

import typer

from kvmkit import __version__, output
from kvmkit.errors import KvmkitError

EXIT_CODES = ("Exit codes: 0 ok · 1 a check or command failed · 2 bad input or usage (nothing changed) · 3 not found · "
              "4 conflict (busy, running, exists) · 5 the host lacks something (root, a tool, an agent) · "
              "6 an operation failed part-way (the message says what was cleaned up) · 70 internal error · "
              "130 interrupted.")

app = typer.Typer(no_args_is_help=True, add_completion=True, help=__doc__, epilog=EXIT_CODES)

# (name, module, help): a sub-app is imported only when used, so `kvmkit snapshot …` does not pay for SciPy.
SUBCOMMANDS = [
    ("lab", "kvmkit.lab.cli", "A real local KVM lab: libvirt + QEMU VMs with qemu-guest-agent, XFS, Ceph."),
    ("snapshot", "kvmkit.snapshot.cli", "Storage-based live VM snapshots: create, list, revert, delete, recover."),
    ("backup", "kvmkit.backup.cli", "Back snapshots up to secondary storage: full, incremental, verified restore."),
    ("schedule", "kvmkit.jobs.schedule_cli", "Scheduled snapshots and backups with retention."),
    ("congestion", "kvmkit.congestion.cli", "Per-VM CPU congestion: live view, exporter, SLO control."),
    ("memory", "kvmkit.memory.cli", "Per-VM memory pressure vs RAM oversubscription: live view, advice, control."),
    ("serve", "kvmkit.serve", "One Prometheus exporter: congestion, memory and snapshot/backup health metrics."),
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
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs (exit codes stay the same)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and --json output; no progress or tables."),
) -> None:
    """kvmkit: storage-based live VM snapshots and measured performance for KVM clouds."""
    global _debug
    _debug = debug
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if quiet:
        output.console.quiet = True  # rich output only: print_json writes to stdout itself, errors use stderr


def _json_wanted(argv: list[str]) -> bool:
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def _fail(message: str, code: int, kind: str, argv: list[str]) -> None:
    """One line on stderr; with --json also one JSON object on stdout, so a script reading stdout sees the error."""
    if _json_wanted(argv):
        sys.stdout.write(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}) + "\n")
        sys.stdout.flush()
    print(f"kvmkit: error: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    argv = sys.argv[1:]
    try:
        mount(argv)
        # without standalone mode click returns typer.Exit's code instead of exiting: pass it on
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except KvmkitError as exc:
        if _debug:  # the whole chain (each `raise … from exc` shows its cause), and still the mapped exit code
            traceback.print_exception(exc, file=sys.stderr)
        _fail(str(exc), exc.exit_code, output.error_type(exc), argv)
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
            if _json_wanted(argv):  # a script reading stdout sees usage errors too
                sys.stdout.write(json.dumps({"error": {"type": "usage_error", "message": exc.format_message(),
                                                       "exit_code": exc.exit_code}}) + "\n")
                sys.stdout.flush()
            exc.show()
            sys.exit(exc.exit_code)
        libvirt = sys.modules.get("libvirt")  # never imported here: `kvmkit plan` does not load libvirt at all
        if _debug:
            traceback.print_exc()
        if libvirt is not None and isinstance(exc, libvirt.libvirtError):
            _fail(f"libvirt: {exc.get_error_message()}", 6, "libvirt_error", argv)
        if _json_wanted(argv):
            _fail(f"internal error: {type(exc).__name__}: {exc}", 70, "internal_error", argv)
        print(f"kvmkit: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        sys.exit(70)
