"""`kvmkit schedule add | list | remove | run`: thin CLI over jobs.schedule."""

from __future__ import annotations

import signal
import threading
from datetime import datetime

import typer

from kvmkit import config
from kvmkit.backup import retention
from kvmkit.backup.cli import CONNECT, JSON, KEEP_DAILY, KEEP_HOURLY, KEEP_LAST, KEEP_WEEKLY, TARGET  # one wording
from kvmkit.jobs import schedule as sched
from kvmkit.output import console, print_json, print_table

app = typer.Typer(no_args_is_help=True, help="Periodic snapshots and backups with retention.")



def _defined(uri: str):
    """A check that asks libvirt whether a VM is defined; libvirt unreachable is an error, not a yes."""
    from kvmkit.errors import NotFound
    from kvmkit.virt.connection import connection, lookup

    def exists(vm: str) -> bool:
        with connection(uri) as conn:
            try:
                lookup(conn, vm)
            except NotFound:
                return False
            return True
    return exists


def _group_defined(settings: config.Settings):
    """A check that the catalog holds the group's definition (made by its first `snapshot create --group`)."""
    from kvmkit.snapshot.catalog import Catalog

    def exists(group: str) -> bool:
        return bool(Catalog(settings.catalog_path).group_vms(group))
    return exists


@app.command("add")
def add(vm: str, every: str = typer.Option(..., "--every", help="Period: 15m, 1h, 1d, 1w."),
        keep_last: int = KEEP_LAST, keep_hourly: int = KEEP_HOURLY, keep_daily: int = KEEP_DAILY,
        keep_weekly: int = KEEP_WEEKLY,
        backup: bool = typer.Option(False, "--backup", help="Back every snapshot up too."),
        target: str | None = TARGET,
        allow_undefined: bool = typer.Option(False, "--allow-undefined",
                                             help="Accept a VM libvirt does not know (yet): no check."),
        group: bool = typer.Option(False, "--group", help="VM names a consistency group (kvmkit snapshot create "
                                                          "--group NAME VM…): one instant across its VMs."),
        connect: str | None = CONNECT, json_out: bool = JSON) -> None:
    """Snapshot a VM (or a consistency group) periodically and prune its scheduled snapshots (and backups)."""
    from kvmkit.virt.connection import check_vm_name

    settings = config.load()
    policy = retention.RetentionPolicy(keep_last, keep_hourly, keep_daily, keep_weekly)
    exists = _group_defined(settings) if group else None if allow_undefined else _defined(
        connect or settings.libvirt_uri)
    item = sched.add(settings, sched.Schedule(vm=check_vm_name(vm), every_s=sched.parse_every(every),
                                              backup=backup, target=target, group=group, **policy.__dict__),
                     vm_exists=exists)
    if json_out:
        print_json(item)
    else:
        rules = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in policy.__dict__.items() if v)
        console.print(f"{vm}: snapshot every {_period(item.every_s)}, {rules}{', backed up' if backup else ''}")


@app.command("list")
def list_(json_out: bool = JSON) -> None:
    """Schedules and when each last succeeded."""
    items = sched.ScheduleBook(config.load().state_dir).read()
    if json_out:
        print_json(items)
    elif not items:
        console.print("no schedules (add one with `kvmkit schedule add VM --every 1d --keep-daily 7`)")
    else:
        print_table(None, ["VM", "every", "keep last", "keep hourly", "keep daily", "keep weekly", "backup",
                           "last success"],
                    [(s.vm, _period(s.every_s), s.keep_last, s.keep_hourly, s.keep_daily, s.keep_weekly,
                      s.target or ("yes" if s.backup else "no"),
                      s.last_run.strftime("%Y-%m-%d %H:%M:%S") if s.last_run else "never") for s in items])


def _period(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@app.command("remove")
def remove(vm: str, json_out: bool = JSON) -> None:
    """Stop scheduling a VM (its snapshots and backups stay)."""
    item = sched.remove(config.load(), vm)
    print_json(item) if json_out else console.print(f"{vm}: schedule removed")


@app.command("run")
def run(once: bool = typer.Option(False, "--once", help="Run what is due now and exit (for cron or a timer): "
                                                        "exit 1 when any job failed."),
        connect: str | None = CONNECT, json_out: bool = JSON) -> None:
    """Take due snapshots and prune; without --once, loop until SIGTERM/SIGINT (a systemd unit)."""
    from kvmkit.snapshot.context import SnapshotContext

    settings = config.load()
    stop = threading.Event()
    if not once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while True:
        now = datetime.now()
        actions = sched.run_once(settings, now, lambda: SnapshotContext.from_settings(settings, connect))
        if json_out:
            print_json(actions)
        else:
            for action in actions:
                console.print(f"{now:%Y-%m-%d %H:%M:%S} {action.vm}: {action.action} {action.detail}",
                              markup=False, highlight=False, soft_wrap=True)
        if once:
            if sched.failed(actions):
                raise typer.Exit(1)
            return
        if stop.is_set():
            return
        wake = sched.next_due(sched.ScheduleBook(settings.state_dir).read(), datetime.now())
        stop.wait(min(60.0, max(1.0, (wake - datetime.now()).total_seconds())))
        if stop.is_set():
            return
