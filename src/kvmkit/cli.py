"""The `kvmkit` command: mounts one sub-app per capability and turns KvmkitError into one line + exit code."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import traceback

import typer
from typer import _click as click  # typer vendors click
from typer.core import TyperCommand, TyperGroup

from kvmkit import __version__

EXIT_CODES = ("Exit codes: 0 ok · 1 a check or command failed · 2 bad input or usage (nothing changed) · 3 not found · "
              "4 conflict (busy, running, exists) · 5 the host lacks something (root, a tool, an agent) · "
              "6 an operation failed part-way (the message says what was cleaned up) · 70 internal error · "
              "130 interrupted.")


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


class LazyGroup(TyperGroup):
    """The root command: a sub-app is imported only when its name is run, never for `--help` or `--version`
    (which list the names and help lines from SUBCOMMANDS), so a host without SciPy, plotly or the libvirt bindings
    still starts in a fraction of a second and each command says what *it* lacks."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in SUBCOMMANDS]

    _listing = False  # inside --help: a stub per sub-app (its name and help line) instead of importing it

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        entry = next((e for e in SUBCOMMANDS if e[0] == name), None)
        if entry is None:
            return None
        _, module, help_text = entry
        if self._listing:
            return TyperCommand(name, help=help_text, short_help=help_text)
        module_name, _, attr = module.partition(":")
        sub = typer.main.get_command(getattr(_import(module_name), attr or "app"))
        sub.help = help_text
        sub.name = name
        self.commands[name] = sub
        return sub

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, _, help_text in SUBCOMMANDS])


def _import(module_name: str):
    """A sub-app's module; a missing Debian binding (libvirt, rbd, rados) is one line with the package to install."""
    return importlib.import_module(module_name)  # a missing binding: main() words it, with the package


BINDINGS = {"libvirt": "python3-libvirt", "libvirt_qemu": "python3-libvirt", "rbd": "python3-rbd",
            "rados": "python3-rados", "nbd": "python3-libnbd", "pyfuse3": "python3-pyfuse3"}

HELP = "kvmkit: storage-based live VM snapshots and measured performance for KVM clouds."
app = typer.Typer(no_args_is_help=True, add_completion=True, help=HELP, epilog=EXIT_CODES, cls=LazyGroup)


def mount(argv: list[str]) -> None:
    """Mount every sub-app now (tests walk the whole command tree); `kvmkit` itself mounts lazily (LazyGroup)."""
    del argv
    for name, module, help_text in SUBCOMMANDS:
        module_name, _, attr = module.partition(":")
        app.add_typer(getattr(importlib.import_module(module_name), attr or "app"), name=name, help=help_text)


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
        from kvmkit import output

        output.console.quiet = True  # rich output only: print_json writes to stdout itself, errors use stderr


def _json_wanted(argv: list[str]) -> bool:
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def _fail(message: str, code: int, kind: str, argv: list[str], hint: str = "") -> None:
    """One line on stderr; with --json also one JSON object on stdout, so a script reading stdout sees the error."""
    if _json_wanted(argv):
        sys.stdout.write(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}) + "\n")
        sys.stdout.flush()
    print(f"kvmkit: error: {message}{f' ({hint})' if hint else ''}", file=sys.stderr)
    sys.exit(code)


def _help_for(exc: BaseException) -> str:
    """`kvmkit snapshot list --help` for a usage error in that command (whatever the program was called)."""
    names = []
    ctx = getattr(exc, "ctx", None)
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["kvmkit", *reversed(names), "--help"])


EXTRAS = {"scipy": "kvmkit[plan]", "plotly": "kvmkit[plan]", "boto3": "kvmkit[s3]", "storpool": "kvmkit[storpool]"}


def _missing_binding(exc: BaseException) -> str | None:
    """How to install what a command found missing: a Debian binding (libvirt, rbd …) or an extra, else None."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    top = (exc.name or "").split(".")[0]
    if top in BINDINGS:
        return f"the {top} Python bindings: apt-get install {BINDINGS[top]} (a venv needs --system-site-packages " \
               "to see them)"
    if top in EXTRAS:
        return f"{top}: pip install '{EXTRAS[top]}'"
    return None


def main() -> None:
    argv = sys.argv[1:]
    try:
        # without standalone mode click returns typer.Exit's code instead of exiting: pass it on
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Abort:
        print("kvmkit: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("kvmkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors: one line like every other error, with where to look
        if not exc.format_message():  # no arguments: click printed the help, and its exit code stands
            exc.show()
            sys.exit(exc.exit_code)
        _fail(exc.format_message(), exc.exit_code, "usage_error", argv, hint=f"see `{_help_for(exc)}`")
    except Exception as exc:  # kvmkit's own errors, and anything unforeseen: still one line
        errors = sys.modules.get("kvmkit.errors")  # imported by every command that can raise one
        if errors is not None and isinstance(exc, errors.KvmkitError):
            from kvmkit import output

            if _debug:  # the whole chain (each `raise … from exc` shows its cause), and still the mapped exit code
                traceback.print_exception(exc, file=sys.stderr)
            _fail(str(exc), exc.exit_code, output.error_type(exc), argv)
        if _debug:
            traceback.print_exc()
        how = _missing_binding(exc)
        if how is not None:
            _fail(f"this command needs {how}", 5, "environment_problem", argv)
        libvirt = sys.modules.get("libvirt")  # never imported here: `kvmkit plan` does not load libvirt at all
        if libvirt is not None and isinstance(exc, libvirt.libvirtError):
            _fail(f"libvirt: {exc.get_error_message()}", 6, "libvirt_error", argv)
        if _json_wanted(argv):
            _fail(f"internal error: {type(exc).__name__}: {exc}", 70, "internal_error", argv)
        print(f"kvmkit: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        sys.exit(70)
