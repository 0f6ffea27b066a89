"""`kvmkit backup create | list | restore | mount | verify | delete | prune | bench`: thin CLI over the library
(jobs.back_up, restore.restore, manage.prune …)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from kvmkit import config
from kvmkit.backup import key_cli, manage, retention
from kvmkit.backup.model import BackupManifest, DiskBackup
from kvmkit.backup.targets import open_target
from kvmkit.confirm import DRY_RUN, YES, go_ahead
from kvmkit.errors import InvalidInput, OperationFailed
from kvmkit.names import check_snapshot_name
from kvmkit.output import console, disk_record, err_console, print_json, print_table, to_jsonable

disk_record(DiskBackup)  # --json names a VM's disk `disk` (docs/cli.md); manifests on the target keep `target`

app = typer.Typer(no_args_is_help=True, help="Backups of snapshots to secondary storage.")
target_app = typer.Typer(no_args_is_help=True, help="Backup targets (folders, S3 buckets).")
app.add_typer(target_app, name="target")
key_cli.mount(app, target_app)  # `target init --encryption`, `key export|import|passwd` (key_cli.py)

CONNECT = typer.Option(None, "--connect", "-c", help="libvirt URI (default from config).")
JSON = typer.Option(False, "--json", help="Print JSON.")
TARGET = typer.Option(None, "--target", "-t", help="Backup target name (default: the only one configured).")
KEEP_LAST = typer.Option(0, "--keep-last", help="Keep the newest N.")
KEEP_HOURLY = typer.Option(0, "--keep-hourly", help="Keep the newest of each of the last N hours.")
KEEP_DAILY = typer.Option(0, "--keep-daily", help="Keep the newest of each of the last N days.")
KEEP_WEEKLY = typer.Option(0, "--keep-weekly", help="Keep the newest of each of the last N ISO weeks.")


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich bar with MB/s and ETA on stderr (stdout stays clean for --json); silent when not a terminal."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal, transient=False) as bar:
        task = bar.add_task(label, total=total)
        lock = threading.Lock()

        def advance(n: int) -> None:
            with lock:
                bar.advance(task, n)
        yield advance


def _summary(manifest: BackupManifest) -> dict:
    """A backup as --json prints it: the manifest without its chunk lists, by the output conventions (the disk
    is `disk`, times carry their zone), and its totals."""
    light = manifest.model_copy(update={"disks": [d.model_copy(update={"chunks": []}) for d in manifest.disks]})
    data = to_jsonable(light)
    for disk in data["disks"]:
        del disk["chunks"]
    data.update(kind=manifest.kind.value, written_bytes=manifest.written_bytes, read_bytes=manifest.read_bytes,
                changed_bytes=manifest.changed_bytes)
    return data


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _snapshot(settings: config.Settings, vm: str, name: str, connect: str | None):
    from kvmkit.snapshot.catalog import Catalog
    from kvmkit.virt.connection import connection, lookup

    with connection(connect or settings.libvirt_uri) as conn:
        vm_uuid = lookup(conn, vm).UUIDString()
    return Catalog(settings.catalog_path).get(vm_uuid, name, vm)


@app.command()
def create(vm: str, snapshot: str, target: str | None = TARGET, connect: str | None = CONNECT,
           json_out: bool = JSON) -> None:
    """Back a snapshot up (incremental against the VM's newest earlier backup on the target)."""
    from kvmkit.jobs.backups import back_up

    settings = config.load()
    snap = _snapshot(settings, vm, snapshot, connect)
    from kvmkit.backup.create import plan_bytes  # the drivers (and libvirt) only for commands that read disks

    with progress_bar(f"{vm}/{snapshot}", plan_bytes(snap)) as advance:
        manifest = back_up(settings, snap, target, advance)
    if json_out:
        print_json(_summary(manifest))
        return
    rate = manifest.read_bytes / manifest.seconds / 1e6 if manifest.seconds else 0.0
    methods = ", ".join(f"{d.target} by {d.change_method.value}" for d in manifest.disks if d.change_method)
    console.print(f"{vm}: backup of [bold]{snapshot}[/] on {manifest.target}: {manifest.kind.value}"
                  f"{f' (parent {manifest.parent})' if manifest.parent else ''}"
                  f"{f', changes found: {methods}' if methods else ''}, read {_human(manifest.read_bytes)}, "
                  f"changed {_human(manifest.changed_bytes)}, wrote {_human(manifest.written_bytes)} + manifest "
                  f"{_human(manifest.manifest_bytes)}, {manifest.seconds:.1f} s ({rate:.0f} MB/s read)")


@app.command("list")
def list_(vm: str | None = typer.Argument(None), target: str | None = TARGET, json_out: bool = JSON) -> None:
    """Good backups (complete manifests), oldest first; a partial upload is never listed."""
    manifests, damaged = manage.list_backups(config.load(), vm, target)
    for bad in damaged:  # stderr: --json's list keeps its shape
        err_console.print(f"damaged manifest {bad.key} (ignored): {bad.problem}", markup=False, highlight=False)
    if json_out:
        print_json([_summary(m) for m in manifests])
        return
    if not manifests:
        console.print(f"no backups{f' of VM {vm}' if vm else ''} on target {target or 'the default target'}",
                      markup=False, highlight=False, soft_wrap=True)
        return
    rows = [(m.vm, m.snapshot, m.snapshot_created.strftime("%Y-%m-%d %H:%M:%S"), m.kind.value, m.parent or "",
             ", ".join(f"{d.target}:{d.driver}" for d in m.disks), _human(sum(d.size_bytes for d in m.disks)),
             _human(m.written_bytes)) for m in manifests]
    print_table(None, ["VM", "snapshot", "taken", "kind", "parent", "disks", "size", "written"], rows)


@app.command()
def restore(vm: str, snapshot: str,
            to: list[str] = typer.Option(None, "--to", help="DEST (one disk) or DISK=DEST; DEST is a file path "
                                                            "or pool/image. Default: each disk's original place."),
            force: bool = typer.Option(False, "--force", help="Replace a destination that exists."),
            force_offline: bool = typer.Option(False, "--force-offline",
                                               help="Allow replacing a disk of a defined VM that is shut off."),
            fmt: str | None = typer.Option(None, "--format", help="raw or qcow2 for file destinations "
                                           "(self-contained: no backing file). Default: a disk restored to its "
                                           "own place keeps its format, any other destination is raw."),
            target: str | None = TARGET, json_out: bool = JSON, dry_run: bool = DRY_RUN, yes: bool = YES) -> None:
    """Rebuild every disk of a backup, verifying every chunk; nothing is replaced unless all disks verified.
    A disk of any VM defined on this host is refused (running or not) unless --force-offline and it is shut off.
    With --force (an existing destination is replaced) it shows what it will replace and asks, or needs --yes."""
    from kvmkit.backup import restore as restore_mod

    disk_record(restore_mod.RestoredDisk)
    settings = config.load()
    check_snapshot_name(snapshot)
    manifest = next((m for m in restore_mod.vm_manifests(open_target(settings, target), vm) if m.snapshot == snapshot),
                    None)
    if manifest is not None and (force or dry_run):
        plan = [f"write disk {d.target} of backup {snapshot} to {_destination(d.target, d.source, to or [])}"
                f"{', replacing what is there' if force else ''}" for d in manifest.disks]
        if dry_run:
            print_json({"vm": vm, "dry_run": True, "plan": plan}) if json_out else console.print(
                "\n".join(f"{vm}: would {line}" for line in plan), markup=False, highlight=False, soft_wrap=True)
            return
        go_ahead(f"kvmkit backup restore {vm} {snapshot} --force", plan, yes)
    total = sum(d.size_bytes for d in manifest.disks) if manifest else 0
    with progress_bar(f"restore {vm}/{snapshot}", total) as advance:
        result = restore_mod.restore(settings, vm, snapshot, target, to or [], force, advance, force_offline, fmt)
    if json_out:
        print_json(result)
        return
    for disk in result.disks:
        console.print(f"{result.vm}: {disk.target} restored from backup [bold]{snapshot}[/] to {disk.destination} "
                      f"({disk.format}, {_human(disk.size_bytes)}, {_human(disk.written_bytes)} of data, every "
                      "chunk verified)")


def _destination(disk: str, source: str, to: list[str]) -> str:
    """Where --to sends a disk, in words for the plan (restore itself checks and resolves it)."""
    for item in to:
        name, sep, dest = item.partition("=")
        if sep and name == disk:
            return dest
    if len(to) == 1 and "=" not in to[0]:
        return to[0]
    return f"its own place ({source})"


@app.command()
def mount(vm: str, snapshot: str, mountpoint: str = typer.Argument(..., help="An empty folder."),
          target: str | None = TARGET) -> None:
    """Expose every disk of a backup read-only as MOUNTPOINT/<disk>.raw (FUSE, chunks fetched lazily) until
    `umount MOUNTPOINT` (or Ctrl-C); `mount -o ro,loop MOUNTPOINT/vda.raw /mnt/x` then pulls single files out."""
    from pathlib import Path

    from kvmkit.backup import mount as mount_mod

    def ready(names: list[str]) -> None:
        err_console.print(f"{vm}: backup {snapshot} mounted at {mountpoint} ({', '.join(names)}); "
                          f"umount {mountpoint} to finish")

    status = mount_mod.mount(vm, snapshot, Path(mountpoint), target, ready)
    if status != 0:
        raise OperationFailed(f"the mount of backup {snapshot} at {mountpoint} ended with status {status}")


@app.command()
def verify(vm: str, snapshot: str | None = typer.Argument(None, help="One backup (default: all of the VM's)."),
           target: str | None = TARGET, json_out: bool = JSON) -> None:
    """Read back every chunk the backup(s) need and check its hash, without restoring."""
    from kvmkit.backup import restore as restore_mod

    settings = config.load()
    report = restore_mod.verify(settings, vm, snapshot, target)
    absent = sorted(k for k, v in report.content.items() if v == "absent")
    mismatch = sorted(k for k, v in report.content.items() if v == "mismatch")
    if json_out:
        print_json(report.model_dump(mode="json") | {"ok": report.ok})
    elif not report.damaged and not mismatch:
        verb, note = ("checked", f"; no content digest in {', '.join(absent)} (format-1 manifest: chunk hashes "
                                 "only, chunk order unchecked)") if absent else ("verified", ", content digests match")
        console.print(f"{report.vm}: {len(report.snapshots)} backup(s) {verb}: {report.chunks_checked} chunks, "
                      f"{_human(report.bytes_checked)}, all hashes match{note} ({report.seconds:.1f} s)")
    elif report.damaged:
        print_table(f"{report.vm}: damaged chunks", ["chunk", "problem", "needed by"],
                    [(d.chunk, d.problem, ", ".join(d.disks)) for d in report.damaged])
    if report.damaged:
        first = report.damaged[0]
        damaged = OperationFailed(f"{len(report.damaged)} damaged chunk(s) in backups of {report.vm}; first: chunk "
                                  f"{first.chunk} ({first.problem}) needed by {', '.join(first.disks)}")
        from kvmkit.health import events as health_events

        health_events.record(settings.state_dir, health_events.EventKind.VERIFY_FAILURE, report.vm, damaged)
        raise damaged
    if mismatch:
        failed = OperationFailed(f"content digest mismatch in {', '.join(mismatch)}: the chunk list was edited after "
                                 "the backup (chunks swapped, dropped or added); restore refuses it")
        from kvmkit.health import events as health_events

        health_events.record(settings.state_dir, health_events.EventKind.VERIFY_FAILURE, report.vm, failed)
        raise failed


@app.command()
def delete(vm: str, snapshot: str,
           with_dependants: bool = typer.Option(False, "--with-dependants",
                                                help="Also delete the incremental backups built on this one."),
           dry_run: bool = DRY_RUN, yes: bool = YES, target: str | None = TARGET, json_out: bool = JSON) -> None:
    """Delete a backup (refused while incrementals depend on it) and free the chunks nothing else uses."""
    settings = config.load()
    if dry_run or with_dependants:  # without dependants the plan is the one backup named: nothing to ask
        plan = manage.delete(settings, vm, snapshot, target, with_dependants, dry_run=True)
        if dry_run:
            print_json(plan) if json_out else console.print(f"{plan.vm}: would delete backup(s) "
                                                            f"{', '.join(plan.deleted)}")
            return
    if with_dependants and len(plan.deleted) > 1:  # the dependants go too: say so first
        go_ahead("backup delete --with-dependants", [f"delete backup {name} of {plan.vm}" for name in plan.deleted],
                 yes)
    removal = manage.delete(settings, vm, snapshot, target, with_dependants)
    if json_out:
        print_json(removal)
        return
    console.print(f"{removal.vm}: deleted backup(s) {', '.join(removal.deleted)}; freed {removal.chunks_removed} "
                  f"chunk(s), {_human(removal.bytes_freed)}")
    if removal.sweep_skipped:
        err_console.print(f"chunks not swept: {removal.sweep_skipped}", markup=False, highlight=False)


@app.command()
def prune(vm: str, keep_last: int = KEEP_LAST, keep_hourly: int = KEEP_HOURLY, keep_daily: int = KEEP_DAILY,
          keep_weekly: int = KEEP_WEEKLY, dry_run: bool = DRY_RUN, yes: bool = YES,
          target: str | None = TARGET, json_out: bool = JSON) -> None:
    """Delete the backups no retention rule keeps (never the newest, never a kept backup's parents)."""
    policy = retention.RetentionPolicy(keep_last, keep_hourly, keep_daily, keep_weekly)
    if policy.empty:
        raise InvalidInput("give at least one --keep-* rule")
    settings = config.load()
    if not dry_run:
        plan = manage.prune(settings, vm, policy, target, dry_run=True)
        go_ahead("backup prune", [f"delete backup {name} of {plan.vm}" for name in plan.deleted]
                 + [f"rewrite backup {name} as full (its parent goes)" for name in plan.rebased], yes)
    removal = manage.prune(settings, vm, policy, target, dry_run)
    if json_out:
        print_json(removal)
        return
    print_table(f"{removal.vm}: kept", ["snapshot", "why"], sorted(removal.kept.items()))
    listed = f"{len(removal.deleted)} backup(s){': ' if removal.deleted else ''}{', '.join(removal.deleted)}"
    if dry_run:
        console.print(f"{removal.vm}: would delete {listed}")
        return
    rebased = f"; rewrote {', '.join(removal.rebased)} as full (its parent went)" if removal.rebased else ""
    console.print(f"{removal.vm}: deleted {listed}{rebased}; freed {removal.chunks_removed} chunk(s), "
                  f"{_human(removal.bytes_freed)}")
    if removal.sweep_skipped:
        err_console.print(f"chunks not swept: {removal.sweep_skipped}", markup=False, highlight=False)


@app.command()
def bench(size_mib: int = typer.Option(1024, "--size", help="Source size in MiB (written with random data)."),
          sparse_gib: int = typer.Option(0, "--sparse-gib",
                                         help="Instead: a sparse disk of this many GiB with data in every chunk."),
          stride: int = typer.Option(16, "--stride", help="With --sparse-gib: data in every N-th 1 MiB chunk."),
          compression: str = typer.Option("zstd", "--compression", help="zstd, zlib or none."),
          rounds: int = typer.Option(3, "--rounds", help="dd and backup alternate this many times (medians)."),
          folder: str = typer.Option("/var/tmp", "--dir", help="Source folder (e.g. the lab's XFS pool)."),
          target_folder: str | None = typer.Option(None, "--target-dir", help="Target folder (default: --dir)."),
          peers: str | None = typer.Option(None, "--peers", help="Instead: kvmkit beside these tools on one image "
                                                                  "(restic,borg): full, incremental, unchanged, "
                                                                  "restore."),
          change: float = typer.Option(2.0, "--change", help="With --peers: % of 4 KiB blocks rewritten before "
                                                             "the incremental."),
          sweep: str = typer.Option("0.5,1,5", "--sweep", help="With --peers: then kvmkit alone, incrementals "
                                                               "at these % (at most 3; \"\" for none)."),
          json_out: bool = JSON) -> None:
    """A full backup vs dd reading the same source, dd copying it to the target, and the backup onto tmpfs;
    with --peers, kvmkit vs restic/borg on the same image, source and target filesystem."""
    from pathlib import Path

    from kvmkit.benchmarks import backup as bench_mod

    say = err_console.print if json_out else console.print
    if peers is not None:
        _bench_peers(Path(folder), size_mib, change, peers, sweep, json_out, say)
        return
    result = bench_mod.run(Path(folder), size_mib, sparse_gib, stride, compression,
                           Path(target_folder) if target_folder else None, rounds,
                           progress=lambda m: say(f"[dim]bench:[/] {m}"))
    if json_out:
        print_json(result)
        return
    console.print(f"source {result.source} → target {result.target}, compression {result.compression}, "
                  f"medians of {result.rounds}")
    print_table(None, ["measure", "value"], result.rows())


def _bench_peers(folder, size_mib: int, change: float, peers: str, sweep: str, json_out: bool, say) -> None:
    from kvmkit.benchmarks import backup_peers

    result = backup_peers.run(folder, size_mib, change, backup_peers.parse_peers(peers),
                              progress=lambda m: say(f"[dim]bench:[/] {m}"), sweep=backup_peers.parse_sweep(sweep))
    if json_out:
        print_json(result)
        return
    console.print(f"{result.size_bytes / 2**20:.0f} MiB image ({result.data_bytes / 2**20:.0f} MiB data), "
                  f"{result.change_percent} % changed ({result.changed_bytes / 1e6:.1f} MB), {result.filesystem}")
    print_table(None, backup_peers.HEADERS, result.rows())
    for peer, ratios in result.ratios.items():
        console.print(f"kvmkit / {peer}: " + ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items()))
    console.print("targets: " + ", ".join(f"{k} {v:.3f}" for k, v in result.targets.items()))
    if result.sweep:
        console.print("kvmkit incremental sweep (in process, × its full): " + ", ".join(
            f"{p.change_percent} % {p.over_full_in_process:.3f}×" for p in result.sweep))
