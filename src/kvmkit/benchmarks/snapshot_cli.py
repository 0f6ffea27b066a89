"""`kvmkit snapshot bench`: the snapshot benchmarks' CLI wiring (mounted by kvmkit.snapshot.cli), kept with the
benchmarks so the snapshot CLI holds only the product's commands. Every bench prints its ratio against an anchor
measured in the same run, and the peak RSS."""

from __future__ import annotations

import typer

from kvmkit import config
from kvmkit.errors import InvalidInput
from kvmkit.output import console, err_console, print_json, print_table

CONNECT = typer.Option(None, "--connect", "-c", help="libvirt URI (default from config: qemu:///system).")
JSON = typer.Option(False, "--json", help="Print JSON.")


def bench(
    disks: str = typer.Option("1,4,16", "--disks", help="Disk counts to measure, comma-separated."),
    rounds: int = typer.Option(5, "--rounds", help="Measured rounds per disk count (after one warm-up)."),
    filesystems: str = typer.Option("every", "--filesystems",
                                    help="every: each disk has a mounted ext4 to freeze; first: only the first."),
    storage: str = typer.Option("file", "--storage", help="file (vs libvirt), rbd (concurrency, groups, revert) or "
                                "storpool (on the FAKE StorPool API: group = 1 call, concurrency; 4 disks unless "
                                "--disks N)."),
    api_latency_ms: float = typer.Option(0.0, "--api-latency-ms",
                                         help="storpool: a server-side delay per fake API call, in ms."),
    revert_sizes: str = typer.Option("1,8", "--revert-sizes", help="rbd: image sizes in GiB for the revert timing."),
    paxos_interval: float = typer.Option(1.0, "--paxos-interval",
                                         help="rbd: mon paxos_propose_interval during the run (1 s = production)."),
    fragment: bool = typer.Option(False, "--fragment",
                                  help="file: fragment a disk first; barrier vs reflink-in-freeze vs libvirt."),
    extents: int = typer.Option(200_000, "--extents", help="--fragment: extents to create (≥ 200k is the target)."),
    shape: str | None = typer.Option(None, "--shape", help="cloudstack: a CloudStack-shaped VM vs a default one "
                                     "and vs a one-disk-after-another loop (its own cephx lab, brought up and down)."),
    group: bool = typer.Option(False, "--group", help="A consistency group of --vms VMs (2 RBD disks each) vs one "
                               "VM alone: freeze window (quiesced) and one rbd.Group snapshot (crash-consistent)."),
    vms: int = typer.Option(4, "--vms", help="--group: how many VMs the group has."),
    connect: str | None = CONNECT,
    json_out: bool = JSON,
) -> None:
    """Measure snapshot freeze windows on lab VMs, against an anchor run in the same process."""
    from kvmkit.benchmarks import snapshot as bench_mod

    settings = config.load()
    say = err_console.print if json_out else console.print
    if group:
        _bench_group(settings.lab_path, connect or settings.libvirt_uri, vms, rounds, paxos_interval, json_out, say)
        return
    if shape is not None:
        _bench_shape(settings.lab_path, connect or settings.libvirt_uri, shape, rounds, paxos_interval, json_out, say)
        return
    if fragment:
        _bench_fragment(settings.lab_path, connect or settings.libvirt_uri, extents, rounds, json_out, say)
        return
    if storage == "rbd":
        _bench_rbd(settings.lab_path, connect or settings.libvirt_uri, disks, rounds, revert_sizes, paxos_interval,
                   json_out, say)
        return
    if storage == "storpool":
        from kvmkit.benchmarks.storpool_cli import bench_storpool

        bench_storpool(settings.lab_path, connect or settings.libvirt_uri, disks, rounds, api_latency_ms, json_out)
        return
    if storage != "file":
        raise InvalidInput("--storage must be 'file', 'rbd' or 'storpool'")
    if filesystems not in ("every", "first"):
        raise InvalidInput("--filesystems must be 'every' or 'first'")
    result = bench_mod.run(settings.lab_path, connect or settings.libvirt_uri, bench_mod.parse_counts(disks), rounds,
                           progress=lambda m: say(f"[dim]bench:[/] {m}"), filesystems=filesystems)
    if json_out:
        print_json(result)
        return
    print_table(f"freeze window, {result.storage} disks, filesystems on {filesystems} disk(s), "
                f"{result.accel.upper()} (median of {rounds})",
                ["disks", "kvmkit ms", "kvmkit max", "of which disk snapshots", "libvirt ms", "libvirt max",
                 "kvmkit/libvirt"],
                [(r.disks, r.kvmkit_median_ms, r.kvmkit_max_ms, r.kvmkit_storage_median_ms, r.libvirt_median_ms,
                  r.libvirt_max_ms, f"{r.ratio_vs_libvirt:.2f}×") for r in result.results])
    if result.scaling_max_vs_1_disk is not None:
        most = max(r.disks for r in result.results)
        console.print(f"kvmkit {most} disks vs 1 disk: window {result.scaling_max_vs_1_disk:.2f}×, "
                      f"disk-snapshot phase {result.storage_scaling_max_vs_1_disk:.2f}×")
    console.print(f"peak RSS {result.peak_rss_mib} MiB, {result.seconds} s")


def _bench_group(lab_path, uri: str, vms: int, rounds: int, paxos: float, json_out: bool, say) -> None:
    from kvmkit.benchmarks import snapshot_group

    r = snapshot_group.run(lab_path, uri, vms, rounds, paxos, progress=lambda m: say(f"[dim]bench:[/] {m}"))
    if json_out:
        print_json(r)
        return
    print_table(f"consistency group of {r.vms} VMs × {r.disks_per_vm} RBD disks (median of {r.rounds}, paxos "
                f"{r.paxos_propose_interval_s:g} s)", ["what", "one VM alone", f"group of {r.vms}", "ratio"],
                [("quiesced: freeze window (first freeze → last thaw)", f"{r.single_freeze_median_ms} ms",
                  f"{r.group_freeze_median_ms} ms", f"{r.group_vs_single_freeze:.2f}× (target ≤ 1.3×)"),
                 ("crash-consistent: one rbd.Group snapshot", f"{r.single_rbd_group_median_ms} ms",
                  f"{r.group_rbd_group_median_ms} ms", f"{r.group_vs_single_rbd_group:.2f}× (target ≤ 1.2×)")])
    console.print(f"peak RSS {r.peak_rss_mib} MiB, {r.seconds} s")


def _bench_shape(lab_path, uri: str, shape: str, rounds: int, paxos: float, json_out: bool, say) -> None:
    from kvmkit.benchmarks import snapshot_shapes

    r = snapshot_shapes.run(lab_path, uri, rounds, shape, paxos, progress=lambda m: say(f"[dim]bench:[/] {m}"))
    if json_out:
        print_json(r)
        return
    print_table(f"freeze window, {shape} shape: {r.disks} (median of {rounds}, paxos {r.paxos_propose_interval_s} s)",
                ["VM", "freeze ms", "ratio"],
                [("default shape", r.default_freeze_median_ms, "anchor"),
                 (f"{shape} shape", r.shaped_freeze_median_ms, f"{r.shaped_vs_default:.2f}× default"),
                 (f"{shape}, one disk after another", r.loop_freeze_median_ms,
                  f"shaped = {r.shaped_vs_loop:.2f}× the loop")])
    console.print(f"peak RSS {r.peak_rss_mib} MiB, {r.seconds} s")


def _bench_rbd(lab_path, uri: str, disks: str, rounds: int, revert_sizes: str, paxos: float,
               json_out: bool, say) -> None:
    from kvmkit.benchmarks import snapshot_rbd as bench_rbd
    from kvmkit.benchmarks.snapshot import parse_counts

    sizes = parse_counts(revert_sizes)
    result = bench_rbd.run(lab_path, uri, parse_counts(disks), rounds, sizes,
                           progress=lambda m: say(f"[dim]bench:[/] {m}"), paxos_interval_s=paxos)
    if json_out:
        print_json(result)
        return
    print_table(f"RBD snapshots (median of {rounds}; mon paxos_propose_interval {paxos:g} s)",
                ["disks", "one create_snap", "freeze: concurrent", "(of which snaps)", "freeze: sequential",
                 "(of which snaps)", "group, no freeze", "snaps / one create_snap"],
                [(r.disks, f"{r.one_create_snap_ms} ms", f"{r.concurrent_freeze_median_ms} ms",
                  f"{r.concurrent_storage_median_ms} ms", f"{r.sequential_freeze_median_ms} ms",
                  f"{r.sequential_storage_median_ms} ms", f"{r.group_wall_median_ms} ms",
                  f"{r.storage_vs_one_create_snap:.2f}×") for r in result.results])
    print_table("RBD revert", ["image", "by clone", "by rollback", "rollback / clone"],
                [(f"{r.size_gib} GiB", f"{r.clone_ms} ms", f"{r.rollback_ms} ms", f"{r.rollback_vs_clone}×")
                 for r in result.revert])
    console.print(f"peak RSS {result.peak_rss_mib} MiB, {result.seconds} s")


def _bench_fragment(lab_path, uri: str, extents: int, rounds: int, json_out: bool, say) -> None:
    from kvmkit.benchmarks import snapshot_fragment as bench_fragment

    if extents < 1 or rounds < 1:
        raise InvalidInput("--extents and --rounds must be positive")
    r = bench_fragment.run(lab_path, uri, extents, progress=lambda m: say(f"[dim]bench:[/] {m}"), rounds=rounds)
    if json_out:
        print_json(r)
        return
    print_table(f"fragmented file disk ({r.disk_gib} GiB, {r.extents_before} → {r.extents_after} extents, "
                f"medians of {r.rounds})", ["what", "freeze window", "until durable, no overlay"],
                [("kvmkit, unfragmented disk", f"{r.unfragmented_freeze_ms} ms", ""),
                 ("reflink alone (VM idle)", "", f"{r.reflink_alone_ms} ms"),
                 ("kvmkit, overlay barrier via QMP (default)", f"{r.barrier_freeze_ms} ms",
                  f"{r.barrier_total_ms} ms (commit {r.barrier_commit_ms} ms)"),
                 ("kvmkit, overlay barrier via libvirt", f"{r.libvirt_barrier_freeze_ms} ms",
                  f"{r.libvirt_barrier_total_ms} ms"),
                 ("kvmkit forced to reflink in the freeze", f"{r.forced_reflink_freeze_ms} ms", ""),
                 ("libvirt quiesced disk-only", f"{r.libvirt_ms} ms", "")])
    console.print(f"barrier window vs unfragmented: {r.barrier_vs_unfragmented:.2f}× the median, "
                  f"{r.barrier_vs_unfragmented_best:.2f}× the best round ({r.unfragmented_best_freeze_ms} ms) "
                  f"(target ≤ 1.2×; via libvirt "
                  f"{r.libvirt_barrier_vs_unfragmented:.2f}×); durable, no overlay left, after "
                  f"{r.total_vs_reflink_plus_commit:.2f}× (reflink alone + commit) from the call, "
                  f"{r.after_thaw_vs_reflink_plus_commit:.2f}× from the thaw (target ≤ 1×)")
    console.print(f"peak RSS {r.peak_rss_mib} MiB, {r.seconds} s")
