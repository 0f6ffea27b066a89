"""`kvmkit snapshot create | list | revert | delete | recover | bench`: thin CLI over the engine."""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from kvmkit import config
from kvmkit.confirm import DRY_RUN, YES, go_ahead
from kvmkit.errors import InvalidInput
from kvmkit.jobs import snapshots as jobs
from kvmkit.jobs.outcome import Outcome
from kvmkit.output import console, disk_record, error_json, print_json, print_table, to_jsonable
from kvmkit.snapshot import lifecycle
from kvmkit.snapshot import revert as revert_mod
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.model import DiskSnapshot, Snapshot
from kvmkit.snapshot.recover import recover
from kvmkit.virt.connection import check_vm_name, connection

app = typer.Typer(no_args_is_help=True)

CONNECT = typer.Option(None, "--connect", "-c", help="libvirt URI (default from config: qemu:///system).")
JSON = typer.Option(False, "--json", help="Print JSON.")
disk_record(DiskSnapshot)  # --json names each disk `disk` (the catalog keeps `target`)
WAIT = typer.Option(0.0, "--wait", help="Seconds to wait for another operation on the VM to finish.")


def _context(connect: str | None, settings: config.Settings | None = None) -> SnapshotContext:
    return SnapshotContext.from_settings(settings or config.load(), connect)


def _recovered(connect: str | None) -> SnapshotContext:
    ctx = _context(connect)
    jobs.recover_pass(ctx)
    return ctx


def snapshot_json(snap: Snapshot) -> dict:
    data = to_jsonable(snap)
    for disk in data["disks"]:
        disk["snapshot"] = disk["handle"]
    for key in ("freeze_began", "thaw_ended"):  # always with microseconds, so windows can be compared
        moment = getattr(snap, key)
        data[key] = None if moment is None else moment.isoformat(timespec="microseconds")
    return data


GROUP = typer.Option(None, "--group", "-g", help="A consistency group: several VMs snapshotted as one instant "
                                                 "(named VMs define it; without VMs, its stored definition).")


@app.command()
def create(
    vms: list[str] = typer.Argument(None, help="VM name(s); several run concurrently, each with its own freeze."),
    name: str | None = typer.Option(None, "--name", "-n", help="Snapshot name (default: snap-<timestamp>)."),
    crash_consistent: bool = typer.Option(False, "--crash-consistent",
                                          help="No agent: pause the VM, or a storage group snapshot with no pause."),
    all_vms: bool = typer.Option(False, "--all", help="Every running VM on the connection."),
    allow_full_copy: bool = typer.Option(False, "--allow-full-copy",
                                         help="File disks without reflink: overlay in the freeze, full copy after."),
    backup: bool | None = typer.Option(None, "--backup/--no-backup",
                                       help="Back the snapshot up to secondary storage after the thaw "
                                            "(default: backup_to_secondary in the config)."),
    group: str | None = GROUP,
    wait: float = WAIT,
    connect: str | None = CONNECT,
    json_out: bool = JSON,
) -> None:
    """Snapshot running VMs consistently: freeze, snapshot every disk at once, thaw."""
    settings = config.load()
    ctx = _context(connect, settings)
    want_backup = settings.backup_to_secondary if backup is None else backup
    if group is not None:
        if all_vms:
            raise InvalidInput("--group takes named VMs (or its stored definition), without --all")
        for vm in vms or []:
            check_vm_name(vm)
        _create_group(ctx, settings, group, list(vms or []), name, crash_consistent, wait, allow_full_copy,
                      want_backup, json_out)
        return
    names = list(dict.fromkeys(vms or []))  # `create vm1 vm1` is one snapshot, not a lock race with itself
    if all_vms:
        with connection(ctx.uri) as conn:
            names += [d.name() for d in conn.listAllDomains() if d.isActive() and d.name() not in names]
    if not names:
        raise InvalidInput("name at least one VM, or pass --all")
    for vm in names:
        check_vm_name(vm)

    def created(snap: Snapshot) -> None:
        window = (f"froze {snap.freeze_ms:.1f} ms" if snap.freeze_ms is not None
                  else f"paused {snap.pause_ms:.1f} ms" if snap.pause_ms is not None else "no freeze needed")
        console.print(f"{snap.vm}: snapshot [bold]{snap.name}[/] {snap.state.value} ({snap.mode.value}, {window}, "
                      f"{len(snap.disks)} disk(s): {', '.join(f'{d.target}:{d.driver}' for d in snap.disks)})")

    outcomes = jobs.take(ctx, settings, names, name, crash_consistent=crash_consistent, wait_s=wait,
                         allow_full_copy=allow_full_copy, backup=want_backup,
                         on_created=None if json_out else created, on_backed_up=_backed_up_printer(json_out))
    _finish(outcomes, names, json_out)


def _backed_up_printer(json_out: bool) -> Callable[[Outcome], None]:
    def backed_up(outcome: Outcome) -> None:
        manifest, snap = outcome.backup, outcome.snapshot
        if json_out or manifest is None or snap is None:
            return
        kind = f"incremental on {manifest.parent}" if manifest.parent else "full"
        console.print(f"{snap.vm}: backed up {snap.name} to {manifest.target} ({kind}, {manifest.seconds:.1f} s)")

    return backed_up


def _finish(outcomes: list[Outcome], names: list[str], json_out: bool, head: dict | None = None) -> None:
    """Print what was made (--json: one envelope, every snapshot and every VM's error) and exit with the worst
    failure's code: a snapshot that failed, or a snapshot made whose backup failed."""
    snaps = [o.snapshot for o in outcomes if o.snapshot is not None]
    failures = [(o.vm, o.error) for o in outcomes if o.error is not None]
    failures += [(o.vm, o.backup_error.rephrased(f"snapshot {o.snapshot.name} is ready, but its backup failed: "
                                                f"{o.backup_error}"))
                 for o in outcomes if o.backup_error is not None and o.snapshot is not None]
    if json_out:  # one shape for one VM or several: every snapshot made, every VM's error
        docs = [{**snapshot_json(o.snapshot), **({"backup": {"target": o.backup.target, "parent": o.backup.parent,
                                                             "seconds": o.backup.seconds}} if o.backup else {})}
                for o in outcomes if o.snapshot is not None]
        errors = [{"vm": vm, **error_json(exc, exc.exit_code)} for vm, exc in failures]
        print_json({**(head or {}), "snapshots": docs, "errors": errors})
    if failures:
        if len(failures) == 1 and len(names) == 1 and not snaps:
            if json_out:  # stdout already has the envelope: the error line alone, with its exit code
                print(f"kvmkit: error: {failures[0][1]}", file=sys.stderr)
                raise typer.Exit(failures[0][1].exit_code)
            raise failures[0][1]
        for vm, exc in failures:
            print(f"kvmkit: error: {vm}: {exc}", file=sys.stderr)  # one line each, never wrapped
        raise typer.Exit(max(exc.exit_code for _, exc in failures))


def _create_group(ctx: SnapshotContext, settings: config.Settings, group: str, vms: list[str], name: str | None,
                  crash: bool, wait: float, allow_full_copy: bool, backup: bool, json_out: bool) -> None:
    def created(snap: Snapshot) -> None:
        window = (f"froze {snap.freeze_ms:.1f} ms" if snap.mode.value == "quiesced" and snap.freeze_ms is not None
                  else f"paused {snap.pause_ms:.1f} ms" if snap.pause_ms is not None else "no freeze needed")
        console.print(f"{snap.vm}: snapshot [bold]{snap.name}[/] of group {group} {snap.state.value} "
                      f"({snap.mode.value}, {window}, {len(snap.disks)} disk(s): "
                      f"{', '.join(f'{d.target}:{d.driver}' for d in snap.disks)})")

    outcomes = jobs.take_group(ctx, settings, group, vms, name, crash_consistent=crash, wait_s=wait,
                               allow_full_copy=allow_full_copy, backup=backup,
                               on_created=None if json_out else created, on_backed_up=_backed_up_printer(json_out))
    _finish(outcomes, [o.vm for o in outcomes], json_out, {"group": group})


@app.command("list")
def list_(vm: str | None = typer.Argument(None), group: str | None = typer.Option(
              None, "--group", "-g", help="Only the snapshots of this consistency group."),
          connect: str | None = CONNECT, json_out: bool = JSON) -> None:
    """Snapshots kvmkit knows, oldest first (with --connect: of the VMs defined on that host)."""
    ctx = _recovered(connect)
    if group is not None:
        snaps = [s for s in lifecycle.list_snapshots(ctx, vm) if s.group == group]
    elif connect and vm is None:  # the URI names a host: connect for real, and list what its VMs have
        with connection(ctx.uri) as conn:
            uuids = {d.UUIDString() for d in conn.listAllDomains(0)}
        snaps = [s for s in lifecycle.list_snapshots(ctx, None) if s.vm_uuid in uuids]
    else:
        snaps = lifecycle.list_snapshots(ctx, vm)
    if json_out:
        print_json([snapshot_json(s) for s in snaps])
        return
    if not snaps:
        console.print(f"no snapshots{f' of VM {vm}' if vm else ''}{f' on {connect}' if connect else ''}",
                      markup=False, highlight=False, soft_wrap=True)
        return
    rows = [(s.vm, s.name, s.created.strftime("%Y-%m-%d %H:%M:%S"), s.mode.value, s.state.value,
             "" if s.freeze_ms is None else f"{s.freeze_ms:.1f}",
             ", ".join(f"{d.target}:{d.driver}" for d in s.disks),
             _human(sum(d.size_bytes for d in s.disks))) for s in snaps]
    print_table(None, ["VM", "name", "created", "mode", "state", "freeze ms", "disks", "size"], rows)


def _planned(ctx: SnapshotContext, vm: str, name: str) -> Snapshot:
    """The snapshot a command would act on, read without changing anything (a missing one fails here, exit 3)."""
    from kvmkit.snapshot.model import check_snapshot_name
    from kvmkit.virt.connection import lookup

    check_vm_name(vm)
    check_snapshot_name(name)
    with connection(ctx.uri) as conn:
        vm_uuid = lookup(conn, vm).UUIDString()
    return ctx.catalog.get(vm_uuid, name, vm)


def _show_plan(command: str, plan: list[str], dry_run: bool, yes: bool, json_out: bool, vm: str) -> bool:
    """--dry-run: print the plan, True (stop there). Otherwise ask on a terminal, or need --yes; False: go on."""
    if dry_run:
        if json_out:
            print_json({"vm": vm, "dry_run": True, "plan": plan})
        else:
            console.print("\n".join(f"{vm}: would {line}" for line in plan), markup=False, highlight=False,
                          soft_wrap=True)
        return True
    go_ahead(command, plan, yes)
    return False


def _planned_group(ctx: SnapshotContext, group: str, name: str) -> list[Snapshot]:
    """Every member's snapshot a group command would act on (a missing one fails here, before anything is asked)."""
    from kvmkit.snapshot.group_ops import members

    return members(ctx, group, name)


def _group_args(group: str | None, vm: str, snapshot: str | None) -> tuple[str, str]:
    """`VM SNAPSHOT`, or with --group just `SNAPSHOT` (it arrives in the first slot)."""
    if group is not None:
        if snapshot is not None:
            raise InvalidInput("with --group name only the snapshot: kvmkit snapshot … --group GROUP SNAPSHOT")
        return group, vm
    if snapshot is None:
        raise InvalidInput("name the VM and the snapshot (or --group GROUP and the snapshot)")
    return vm, snapshot


@app.command()
def revert(vm: str = typer.Argument(..., help="The VM (with --group: the snapshot)."),
           snapshot: str | None = typer.Argument(None, help="The snapshot (not with --group)."),
           force_stop: bool = typer.Option(False, "--force-stop", help="Shut the VM down, revert, start it again."),
           rollback: bool = typer.Option(False, "--rollback",
                                         help="RBD: rollback_to_snap (O(size)) instead of the O(1) clone."),
           group: str | None = typer.Option(None, "--group", "-g",
                                            help="Revert every VM of this consistency group, all-or-nothing."),
           wait: float = WAIT, connect: str | None = CONNECT, json_out: bool = JSON,
           dry_run: bool = DRY_RUN, yes: bool = YES) -> None:
    """Put every disk of the VM back to the snapshot (the VM must be shut off, or --force-stop). Shows what it
    will replace and asks (or needs --yes when stdin is not a terminal); --dry-run only shows it."""
    who, snapshot = _group_args(group, vm, snapshot)
    ctx = _recovered(connect)
    snaps = _planned_group(ctx, group, snapshot) if group is not None else [_planned(ctx, who, snapshot)]
    if group is None:
        snaps[0].refuse_alone("revert")  # said before anything is asked
    plan = [line for snap in snaps for line in
            ([f"stop VM {snap.vm} (and start it again afterwards)"] if force_stop else []) +
            [f"replace disk {d.target} of VM {snap.vm} ({d.driver}: {d.source}) with its state at snapshot "
             f"{snapshot} ({snap.created:%Y-%m-%d %H:%M:%S}); what was written since is lost" for d in snap.disks]]
    what = f"--group {group} {snapshot}" if group is not None else f"{who} {snapshot}"
    if _show_plan(f"kvmkit snapshot revert {what}", plan, dry_run, yes, json_out, group or who):
        return
    if group is not None:
        from kvmkit.snapshot.group_ops import revert_group

        snaps = revert_group(ctx, group, snapshot, force_stop=force_stop, wait_s=wait, rollback=rollback)
        if json_out:
            print_json({"group": group, "snapshots": [snapshot_json(s) for s in snaps]})
        else:
            console.print(f"group {group}: reverted {len(snaps)} VM(s) ({', '.join(s.vm for s in snaps)}) to "
                          f"snapshot [bold]{snapshot}[/]")
        return
    snap = revert_mod.revert(ctx, who, snapshot, force_stop=force_stop, wait_s=wait, rollback=rollback)
    if json_out:
        print_json(snapshot_json(snap))
    else:
        console.print(f"{who}: reverted {len(snap.disks)} disk(s) to snapshot [bold]{snapshot}[/]")


@app.command()
def delete(vm: str = typer.Argument(..., help="The VM (with --group: the snapshot)."),
           snapshot: str | None = typer.Argument(None, help="The snapshot (not with --group)."),
           group: str | None = typer.Option(None, "--group", "-g",
                                            help="Delete the snapshot of every VM of this consistency group."),
           wait: float = WAIT, connect: str | None = CONNECT, json_out: bool = JSON,
           dry_run: bool = DRY_RUN, yes: bool = YES) -> None:
    """Delete a snapshot from the storage and the catalog. Shows what it will delete and asks (or needs --yes
    when stdin is not a terminal); --dry-run only shows it."""
    who, snapshot = _group_args(group, vm, snapshot)
    ctx = _recovered(connect)
    snaps = _planned_group(ctx, group, snapshot) if group is not None else [_planned(ctx, who, snapshot)]
    if group is None:
        snaps[0].refuse_alone("delete")  # said before anything is asked
    plan = [f"delete {d.driver} snapshot {d.handle} of disk {d.target}" + (f" of VM {s.vm}" if group else "")
            for s in snaps for d in s.disks] + [f"drop snapshot {snapshot} from the catalog"]
    what = f"--group {group} {snapshot}" if group is not None else f"{who} {snapshot}"
    if _show_plan(f"kvmkit snapshot delete {what}", plan, dry_run, yes, json_out, group or who):
        return
    if group is not None:
        from kvmkit.snapshot.group_ops import delete_group

        snaps = delete_group(ctx, group, snapshot, wait_s=wait)
        if json_out:
            print_json({"group": group, "snapshots": [{**snapshot_json(s), "state": "deleted"} for s in snaps]})
        else:
            console.print(f"group {group}: deleted snapshot [bold]{snapshot}[/] of {len(snaps)} VM(s)")
        return
    snap = lifecycle.delete(ctx, who, snapshot, wait_s=wait)
    if json_out:  # the record as it was, in its final state: gone from the storage and the catalog
        print_json({**snapshot_json(snap), "state": "deleted"})
    else:
        console.print(f"{who}: deleted snapshot [bold]{snapshot}[/] ({len(snap.disks)} disk snapshot(s))")


@app.command()
def flatten(vm: str, wait: float = WAIT, connect: str | None = CONNECT, json_out: bool = JSON,
            dry_run: bool = DRY_RUN, yes: bool = YES) -> None:
    """RBD: detach disks a revert by clone left as clones (copies parent data, O(size)), freeing old snapshots.
    Shows the disks it will look at and asks (or needs --yes when stdin is not a terminal)."""
    ctx = _recovered(connect)
    candidates = _flatten_candidates(ctx, vm)
    plan = [f"{disk}: flatten it if a kvmkit revert left it a clone (copies its parent's data)" for disk in candidates]
    if dry_run:
        if json_out:
            print_json({"vm": vm, "dry_run": True, "candidates": candidates})
        else:
            console.print("\n".join(f"{vm}: would look at {line}" for line in plan) if plan
                          else f"{vm}: nothing to flatten (no disk on a storage that makes clones)",
                          markup=False, highlight=False, soft_wrap=True)
        return
    go_ahead(f"kvmkit snapshot flatten {vm}", plan, yes)
    targets = lifecycle.flatten(ctx, vm, wait_s=wait)
    if json_out:
        print_json({"vm": vm, "dry_run": False, "candidates": candidates, "flattened": targets})
    else:
        console.print(f"{vm}: flattened {', '.join(targets) if targets else 'nothing (no disk is a clone)'}")


def _flatten_candidates(ctx: SnapshotContext, vm: str) -> list[str]:
    """The VM's disks whose storage can flatten (RBD): what `flatten` looks at; read-only."""
    from kvmkit.snapshot.drivers.base import Flattenable
    from kvmkit.snapshot.drivers.registry import driver_for
    from kvmkit.virt.connection import live_disks, lookup

    with connection(ctx.uri) as conn:
        return [disk.target for disk in live_disks(lookup(conn, vm))
                if isinstance(driver_for(disk, ctx.drivers), Flattenable)]


@app.command("recover")
def recover_(
    adopt: bool = typer.Option(False, "--adopt", help="Take kvmkit snapshots this catalog did not make (another "
                                                        "catalog's, or unmarked) into this one: mark and list them."),
    purge_foreign: bool = typer.Option(False, "--purge-foreign", help="Delete kvmkit snapshots this catalog did "
                                                                      "not make (another catalog's, or unmarked)."),
    vm: str | None = typer.Option(None, "--vm", help="Look only at this VM's disks (recommended with --adopt and "
                                                    "--purge-foreign: other VMs may belong to other catalogs)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="--purge-foreign: delete without asking (needed when "
                                                        "stdin is not a terminal)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be finished, deleted, adopted or "
                                                          "dropped; change nothing."),
    connect: str | None = CONNECT, json_out: bool = JSON,
) -> None:
    """Reconcile catalog and storage after a crash: finish or undo interrupted work, remove this catalog's
    orphans; report snapshots other catalogs made (foreign) or none marked (unknown). --purge-foreign first
    lists what it would delete and asks."""
    if adopt and purge_foreign:
        raise InvalidInput("--adopt and --purge-foreign exclude each other")
    if vm is not None:
        check_vm_name(vm)
    ctx = _context(connect)
    if purge_foreign and not yes and not dry_run:  # the plan: a dry pass, so nothing changes before the answer
        found = recover(ctx, full=True, strays="report", only_vm=vm, dry_run=True)
        go_ahead("kvmkit snapshot recover --purge-foreign",
                 [f"delete {a.handle} of VM {a.vm} ({a.whose}{f', catalog {a.owner}' if a.owner else ''})"
                  for a in found if a.whose in ("foreign", "unknown")], yes)
    actions = recover(ctx, full=True, strays="adopt" if adopt else "purge" if purge_foreign else "report",
                      only_vm=vm, dry_run=dry_run)
    if json_out:
        left = [a for a in actions if a.action.startswith("left ")]
        print_json({"dry_run": dry_run, "actions": [a.model_dump(exclude_none=True) for a in actions],
                    "foreign": [{"vm": a.vm, "handle": a.handle, "owner": a.owner}
                                for a in left if a.whose == "foreign"],
                    "unknown": [{"vm": a.vm, "handle": a.handle} for a in left if a.whose == "unknown"]})
    elif not actions:
        console.print("recover: catalog and storage agree; nothing to do")
    else:
        print_table("recover", ["VM", "action", "detail"], [(a.vm, a.action, a.detail) for a in actions])


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# `kvmkit snapshot bench`: its wiring lives with the benchmarks (kvmkit.benchmarks.snapshot_cli), mounted here
from kvmkit.benchmarks.snapshot_cli import bench  # noqa: E402

app.command()(bench)
